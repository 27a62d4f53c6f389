"""The named mesh of `sync` and where each array of the state lives on it (ZeRO/FSDP, tensor).

config.sync.mesh = {data, fsdp, tensor, pipeline}: sizes of the mesh axes whose product is the
device count (one of them may be 0: the rest). The global batch is split over data x fsdp.

Where the parameters, gradients and optimizer state live is a PartitionSpec per leaf, built from
two rules on the parameter's path (flax names) and shape:

- tensor (Megatron, Shoeybi et al. 2019): matmuls in column-then-row pairs. A column-parallel
  kernel [in, out] is split along `out` (each device computes a slice of the outputs, its bias
  split likewise), the next, row-parallel kernel along `in` (each device multiplies its slice,
  the partial products are all-reduced). MLP: Dense_0 column, Dense_1 row, Dense_2 column, ...;
  the classifier stays replicated when it would be a lone column layer. Transformer block: qkv
  and the first MLP Dense column, `out` and the second MLP Dense row; embeddings and norms
  replicated. A dimension the axis does not divide stays whole.
- fsdp (ZeRO, Rajbhandari et al. 2020; FSDP): the largest dimension not split by `tensor` that
  `fsdp` divides is split along `fsdp`; leaves with none (biases, norms, scalars) stay whole.

pipeline (GPipe; stages.py): the blocks stored stacked under STACKED, [L, ...], their leading
  dimension along `pipeline` and the rest by the block's own tensor / fsdp rules.

config.sync.zero picks which parts of the state follow the fsdp rule (Rajbhandari et al.):
  1  optimizer state                              (gradients all-reduced, parameters replicated)
  2  optimizer state and gradients                (gradients reduce-scattered)
  3  optimizer state, gradients and parameters    (parameters all-gathered where they are used)
The update itself is `single`'s, compiled with jax.jit over the mesh (GSPMD): XLA inserts the
collectives that these shardings imply, so every layout computes the single-device update up to
the order of float reductions.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pdist.registry import ConfigError

AXES = ("data", "fsdp", "tensor", "pipeline")
BATCH = ("data", "fsdp")   # the mesh axes the global batch is split over
ZERO_STAGES = (0, 1, 2, 3)


def mesh_sizes(config, devices: int) -> dict[str, int]:
  """{axis: size} from config.sync.mesh for `devices` devices (one axis may be 0: the rest)."""
  sizes = {a: int(config.sync.mesh[a]) for a in AXES}
  if any(s < 0 for s in sizes.values()):
    raise ConfigError(f"config.sync.mesh sizes must be >= 0, got {sizes}")
  rest = [a for a, s in sizes.items() if s == 0]
  if len(rest) > 1:
    raise ConfigError(f"config.sync.mesh: only one axis may be 0 (the rest), got {rest} "
                      f"in {sizes}")
  known = math.prod(s for s in sizes.values() if s)
  if rest:
    if devices % known:
      raise ConfigError(f"config.sync.mesh {sizes}: {devices} devices are not a multiple of the "
                        f"other axes' product {known}")
    sizes[rest[0]] = devices // known
  if math.prod(sizes.values()) != devices:
    raise ConfigError(f"config.sync.mesh {sizes} has {math.prod(sizes.values())} devices, the run "
                      f"has {devices}; make the sizes' product {devices} (or set one axis to 0)")
  return sizes


def is_sharded(config) -> bool:
  """Whether config asks for more than data parallelism (today's shard_map `sync` otherwise)."""
  m = config.sync.mesh
  return int(config.sync.zero) > 0 or any(int(m[a]) != 1 for a in AXES[1:])   # 0: the rest


def explicit_zero(config) -> bool:
  """Whether ZeRO runs with its collectives written out (strategies/sync.py's `Zero`): fsdp
  without tensor, an elementwise optimizer (no global-norm clipping) and no DP-SGD; otherwise
  the GSPMD path places the same state and XLA picks the collectives."""
  m = config.sync.mesh
  return (int(config.sync.zero) > 0 and int(m.tensor) == 1 and int(m.pipeline) == 1
          and int(m.fsdp) != 1 and config.privacy.mechanism == "none"
          and not config.optim.grad_clip > 0)


def validate(config) -> None:
  """The combinations the layouts refuse, in one sentence each."""
  zero = int(config.sync.zero)
  if int(config.sync.microbatches) < 0:
    raise ConfigError(f"config.sync.microbatches must be >= 0, got {config.sync.microbatches}")
  if int(config.sync.microbatches) and int(config.sync.mesh.pipeline) == 1:
    raise ConfigError(f"config.sync.microbatches={config.sync.microbatches} cuts batches for a "
                      "pipeline, but config.sync.mesh.pipeline=1; set the pipeline's size or "
                      "leave config.sync.microbatches=0")
  if zero not in ZERO_STAGES:
    raise ConfigError(f"config.sync.zero must be one of {ZERO_STAGES}, got {zero}")
  m = config.sync.mesh
  for a in AXES:
    if int(m[a]) < 0:
      raise ConfigError(f"config.sync.mesh.{a} must be >= 0, got {m[a]}")
  if int(m.pipeline) == 0:
    raise ConfigError("config.sync.mesh.pipeline=0: give the pipeline an explicit size (its "
                      "stages must divide the model's blocks) and the rest to another axis")
  if not is_sharded(config):
    return
  if int(m.pipeline) != 1:
    if config.privacy.mechanism != "none":
      raise ConfigError("config.sync.mesh.pipeline with DP-SGD: per-example gradients would run "
                        "the pipeline once per example; use data, fsdp or tensor for DP-SGD")
    if config.model.qat:
      raise ConfigError("config.model.qat fake-quantises the model's own forward pass, which the "
                        "pipeline replaces by its stages; leave config.sync.mesh.pipeline=1")
  if zero > 0 and int(m.fsdp) == 1:
    raise ConfigError(f"config.sync.zero={zero} shards along the fsdp axis, which has size 1; "
                      "set config.sync.mesh.fsdp (e.g. 0: the rest of the devices)")
  if zero == 0 and int(m.fsdp) != 1:
    raise ConfigError(f"config.sync.mesh.fsdp={m.fsdp} with config.sync.zero=0 would replicate "
                      "everything along fsdp; set config.sync.zero to 1, 2 or 3, or use "
                      "config.sync.mesh.data")
  if config.sync.backend != "shard_map":
    raise ConfigError("config.sync.mesh with fsdp or tensor runs on jax.jit over the named mesh; "
                      f"leave config.sync.backend='shard_map' (got '{config.sync.backend}')")
  if config.compression.name != "none":
    raise ConfigError("config.compression compresses each device's own gradient; with fsdp or "
                      "tensor a device holds no whole gradient of its own: use the data axis only")


def build_mesh(devices, sizes: dict[str, int]) -> Mesh:
  """The mesh over `devices` (all processes' devices, process by process), axes in AXES order:
  `data` outermost, so with several processes each holds whole fsdp x tensor groups when it can."""
  return Mesh(np.array(devices).reshape([sizes[a] for a in AXES]), AXES)


# -- rules --------------------------------------------------------------------------------------
def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _dense_index(name: str) -> int | None:
  m = re.fullmatch(r"Dense_(\d+)", name)
  return int(m.group(1)) if m else None


def tensor_dims(path: str, shape: tuple[int, ...], layers: int) -> list[str | None]:
  """Per dimension: "tensor" where the tensor rule splits it (see the module doc), else None.
  `layers`: how many Dense_i the top-level model has (the MLP's classifier is the last)."""
  parts = path.split("/")
  name, leaf = parts[-2] if len(parts) > 1 else "", parts[-1]
  column = row = False
  if "Block_" in path:           # transformer blocks
    column = name in ("qkv", "Dense_0")
    row = name in ("out", "Dense_1")
  elif _dense_index(name) is not None and len(parts) == 2:   # the MLP's Dense_i
    i = _dense_index(name)
    last = i == layers - 1
    column = i % 2 == 0 and not last
    row = i % 2 == 1
  dims: list[str | None] = [None] * len(shape)
  if leaf == "kernel" and len(shape) == 2:
    if column:
      dims[1] = "tensor"
    elif row:
      dims[0] = "tensor"
  elif leaf == "bias" and len(shape) == 1 and column:
    dims[0] = "tensor"
  return dims


def spec_for(path: str, shape, sizes: dict[str, int], layers: int, fsdp: bool) -> P:
  """The PartitionSpec of one parameter-shaped leaf: tensor's dims, then (fsdp=True) the largest
  remaining dimension that fsdp divides."""
  dims = tensor_dims(path, shape, layers) if sizes["tensor"] > 1 else [None] * len(shape)
  dims = [d if d is None or shape[i] % sizes[d] == 0 else None for i, d in enumerate(dims)]
  if fsdp and sizes["fsdp"] > 1:
    free = [i for i, d in enumerate(dims) if d is None and shape[i] % sizes["fsdp"] == 0]
    if free:
      i = max(free, key=lambda j: (shape[j], -j))
      dims[i] = "fsdp"
  while dims and dims[-1] is None:
    dims.pop()
  return P(*dims)


def _top_dense_layers(params) -> int:
  tree = params.get("params", params) if isinstance(params, dict) else params
  return sum(1 for k in getattr(tree, "keys", lambda: [])() if _dense_index(str(k)) is not None)


STACKED = "stacked_blocks"   # pipeline parallelism's stacked blocks [L, ...] (stages.py)


def stacked_spec(path: str, shape, sizes: dict[str, int], layers: int, fsdp: bool) -> P:
  """A leaf under STACKED: its leading (block) dimension along `pipeline`, the rest by the rules
  for one transformer block's parameter of that name (an MLP block's Dense: no tensor split)."""
  inner = spec_for("Block_0/" + path.split("/", 1)[1], shape[1:], sizes, layers, fsdp)
  return P("pipeline", *inner)


class Layout:
  """The specs of one run's state on its mesh: parameters, gradients, optimizer state.
  `layers`: the MLP's Dense layer count when params_shape has its blocks stacked."""

  def __init__(self, mesh: Mesh, sizes: dict[str, int], zero: int, params_shape, tx,
               layers: int | None = None):
    self.mesh, self.sizes, self.zero = mesh, sizes, zero
    layers = _top_dense_layers(params_shape) if layers is None else layers

    def spec(path, x, fsdp):
      path = _path(path)
      rule = stacked_spec if path.startswith(STACKED + "/") else spec_for
      return rule(path, x.shape, sizes, layers, fsdp)

    def specs(fsdp: bool):
      return jax.tree_util.tree_map_with_path(lambda p, x: spec(p, x, fsdp), params_shape)

    self.tensor_specs = specs(False)      # tensor only: replicated along fsdp
    self.sharded_specs = specs(True)      # tensor and fsdp
    self.param_specs = self.sharded_specs if zero >= 3 else self.tensor_specs
    self.grad_specs = self.sharded_specs if zero >= 2 else self.tensor_specs
    opt_param_specs = self.sharded_specs if zero >= 1 else self.tensor_specs
    opt_shape = jax.eval_shape(tx.init, params_shape)
    self.opt_specs = optax.tree_map_params(
        tx, lambda _, spec: spec, opt_shape, opt_param_specs,
        transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))

  def sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def shardings(self, specs):
    return jax.tree.map(self.sharding, specs, is_leaf=lambda x: isinstance(x, P))

  def constrain(self, tree, specs):
    return jax.lax.with_sharding_constraint(tree, self.shardings(specs))

  def describe(self) -> dict:
    return {"mesh": dict(self.sizes), "zero": self.zero}

  def per_device(self, tree, specs) -> int:
    """Bytes of `tree` (arrays or shapes) on one device when its leaves follow `specs`."""
    flat = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
    return sum(int(x.size) * x.dtype.itemsize // math.prod(self.sizes[a] for a in s if a)
               for x, s in zip(jax.tree.leaves(tree), flat))


DTYPE_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s8": 1, "u8": 1,
               "pred": 1, "s64": 8, "u64": 8}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _shape_bytes(text: str) -> int:
  """Bytes of an HLO result type: `f32[256,10]{1,0}` or a tuple `(f32[256]{0}, f32[])`."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([0-9,]*)\]", text):
    if dtype in DTYPE_BYTES:
      total += DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _instructions(hlo_text: str):
  """(computation, is_entry, line) for each instruction line of a compiled program's text."""
  name, entry = None, False
  for line in hlo_text.splitlines():
    head = re.match(r"(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line)
    if head and not line.startswith(" "):
      name, entry = head.group(2), bool(head.group(1))
    elif name is not None:
      yield name, entry, line


def _loop_depths(hlo_text: str) -> dict[str, int]:
  """{computation: how many while loops it runs inside} for a compiled program's text (the entry
  computation 0, a while body one more than the computation holding the while)."""
  calls: dict[str, list[tuple[str, bool]]] = {}
  entry = None
  for name, is_entry, line in _instructions(hlo_text):
    entry = name if is_entry else entry
    calls.setdefault(name, [])
    for key, callee in re.findall(r"\b(body|condition|calls|to_apply)=%([\w.\-]+)", line):
      calls[name].append((callee, key == "body"))
    for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
      calls[name].extend((c, False) for c in re.findall(r"%([\w.\-]+)", group))
  depth = {entry: 0} if entry else {}
  todo = [entry] if entry else []
  while todo:
    caller = todo.pop()
    for callee, is_body in calls.get(caller, []):
      d = depth[caller] + int(is_body)
      if d > depth.get(callee, -1):
        depth[callee] = d
        todo.append(callee)
  return depth


def collectives(hlo_text: str, min_loop_depth: int = 0) -> dict[str, dict[str, int]]:
  """{kind: {"count", "bytes"}} of a compiled program's collectives (`compiled.as_text()`): bytes
  are each op's result (an all-gather's whole output, a reduce-scatter's one block, an
  all-reduce's whole buffer; async pairs counted once, at their start). Each op is counted once
  as written, however often a loop runs it; min_loop_depth=k keeps only the ops inside at least
  k nested while loops (e.g. a pipeline's ticks)."""
  out: dict[str, dict[str, int]] = {}
  depths = _loop_depths(hlo_text) if min_loop_depth else {}
  for name, _, line in _instructions(hlo_text):
    m = re.search(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
    if not m or depths.get(name, 0) < min_loop_depth:
      continue
    result = m.group(1)
    if m.group(3):   # an async start returns (operands, outputs, ...): count the outputs only
      parts = re.findall(r"[a-z]+\d*\[[0-9,]*\]", result)
      result = " ".join(parts[len(parts) // 2:])
    entry = out.setdefault(m.group(2), {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += _shape_bytes(result)
  return out
