"""`sync`: synchronous data-parallel SGD over the devices of a mesh.

Each of the N devices takes its contiguous 1/N slice of the global batch (the same global batch,
from the same sampler, that `single` uses), computes the gradient of its slice's mean loss, and the
gradients are averaged across devices (an all-reduce, `lax.pmean`), so every device applies the
identical update theta <- theta - lr * mean_i(grad_i). With equal slices the mean of the slice
means is the global batch's mean: the computation is `single`'s, spread over devices.

Two implementations, checked against each other and against `single` in tests/test_sync.py:
- `shard_map` (default): jit of `jax.shard_map` over the `data` axis; parameters and optimizer
  state are replicated (P()), batch indices sharded along the batch axis.
  Sharp edge (docs/ARCHITECTURE.md, sharp edges): inside shard_map with check_vma, the gradient with respect to a
  replicated input is already summed over the axis, so pmean(grad) would be N times too large.
  We take the gradient with respect to `pcast(params, to="varying")` instead, so each device's
  gradient is its own, and then pmean.
- `pmap`: the older API, with parameters stacked along a leading device axis for each chunk.

The gradient pipeline's local state is per device ([devices, ...], sharded along `data`): each
device runs the local chain on its own gradient, before the all-reduce; the central chain runs
after it on the averaged gradient, with replicated state.

Updates run in chunks (a `lax.scan` of a log interval inside one compiled call) and the host
reads each chunk's metrics at most one chunk later, which also keeps collectives from piling up
(docs/ARCHITECTURE.md, sharp edges: many collectives dispatched back to back on emulated CPU
devices abort the process).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from pdist import network as network_lib
from pdist.parallel import buckets
from pdist.parallel import layout as layout_lib
from pdist.parallel import mesh as mesh_lib
from pdist.parallel import stages as stages_lib
from pdist.parallel.mesh import AXIS
from pdist.registry import STRATEGIES, ConfigError, check_choice, check_positive
from pdist.strategies import base as base_lib
from pdist.strategies.single import Single

BACKENDS = ("shard_map", "pmap")


def sync_config() -> ml_collections.ConfigDict:
  """config.sync: the data-parallel mesh."""
  c = ml_collections.ConfigDict()
  c.devices = 0           # devices in the data-parallel mesh; 0 = all visible (all processes)
  c.backend = "shard_map"  # shard_map (jit of jax.shard_map) or pmap
  # the all-reduce packs gradients and metrics into buckets of at most this many MB (a larger
  # leaf alone; pdist/parallel/buckets.py); 0 = one collective per leaf
  c.bucket_mb = 1.0
  # simulated time of one update's computation on a device (the unit of config.network's
  # latency and bandwidth: with seconds, a measured step time); rows carry sim_time
  c.compute_time = 1.0
  # the named mesh (pdist/parallel/layout.py): sizes of data x fsdp x tensor x pipeline, whose
  # product is the device count; one may be 0 (the rest). The default is data parallelism.
  c.mesh = ml_collections.ConfigDict({"data": 0, "fsdp": 1, "tensor": 1, "pipeline": 1})
  c.zero = 0   # ZeRO along fsdp: 1 optimizer state, 2 + gradients, 3 + parameters
  # micro-batches of the pipeline's GPipe schedule (pdist/parallel/stages.py); 0 = the
  # pipeline's size. The bubble is (p - 1) / (m + p - 1): more micro-batches, less idle time
  c.microbatches = 0
  return c


def validate_sync(config) -> None:
  check_choice(config, "sync.backend", BACKENDS)
  check_positive(config, "sync.devices", "sync.bucket_mb", allow_zero=True)
  check_positive(config, "sync.compute_time")
  layout_lib.validate(config)
  stages_lib.validate(config)


@STRATEGIES.register("sync", config=sync_config, validate=validate_sync,
                     reads=network_lib.READS)
def build_sync(config, task, pipeline=None):
  """`sync`: the shard_map data-parallel step, or with fsdp / tensor / zero the single-device
  step compiled over the named mesh (`Sharded`)."""
  if not layout_lib.is_sharded(config):
    cls = Sync
  elif int(config.sync.mesh.pipeline) != 1 and layout_lib.mesh_sizes(
      config, mesh_lib.data_mesh(config.sync.devices).devices.size)["pipeline"] > 1:
    cls = Pipelined
  else:
    cls = Zero if layout_lib.explicit_zero(config) else Sharded
  return cls(config, task, pipeline=pipeline)


class Sync(Single):

  def __init__(self, config, task, pipeline=None):
    self.mesh = mesh_lib.data_mesh(config.sync.devices)
    self.num_devices = self.mesh.devices.size
    self.backend = config.sync.backend
    self.bucket_bytes = int(config.sync.bucket_mb * 2**20)
    if self.backend == "pmap" and jax.process_count() > 1:
      raise ConfigError("config.sync.backend='pmap' runs in one process; use 'shard_map' "
                        "with several processes")
    b, a = config.data.batch_size, config.optim.accumulate_steps
    if b % self.num_devices:
      raise ConfigError(f"config.data.batch_size={b} is not divisible by the {self.num_devices} "
                        "devices of the data-parallel mesh")
    if (b // self.num_devices) % a:
      raise ConfigError(f"the per-device batch {b // self.num_devices} is not divisible by "
                        f"config.optim.accumulate_steps={a}")
    self._replicated = mesh_lib.replicated(self.mesh)
    self._indices_sharding = NamedSharding(self.mesh, P(None, AXIS))
    self._local = NamedSharding(self.mesh, P(AXIS))
    super().__init__(config, task, device=self.mesh.devices.flat[0], pipeline=pipeline)
    self.network = network_lib.Network(config.network)
    self.compute_time = float(config.sync.compute_time)
    shapes = jax.tree.leaves(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
    wire = self.pipeline.wire_bytes(shapes) if self.pipeline.wire_bytes else None
    # one device's gradient on the wire: dense, all-reduced; compressed, all-gathered
    self.gradient_bytes = (sum(wire) if wire is not None
                           else sum(x.size * x.dtype.itemsize for x in shapes))
    self.compressed = wire is not None
    if self.backend == "shard_map":
      self._chunk = jax.jit(self._sharded_chunk, static_argnums=(3, 4), donate_argnums=(0,))
    else:
      self._pmapped = {}
      # pmap compiles a scan of different lengths differently (parameters then differ at float
      # rounding with the call length), so its calls stay one log row each
      self.segmented = False

  def place_data(self, host: dict):
    """A copy of the training set on every device (stacked for pmap, replicated otherwise)."""
    if self.backend == "pmap":
      return jax.tree.map(self._stack_on_devices, host)
    return jax.device_put(host, self._replicated)

  # -- the math on one device ------------------------------------------------------------------
  def local_copies(self) -> int:
    return self.num_devices  # the local pipeline state: one slice per device

  def gradients(self, params, batch, rng):
    # differentiate this device's copy (varying), not the replicated value: see the module doc
    if self.backend == "shard_map":
      params = jax.lax.pcast(params, AXIS, to="varying")
    return self._grad(params, batch, rng)

  def aggregate(self, grads, metrics):
    # one bucketed all-reduce for both: metrics ride in the last layers' bucket
    return buckets.pmean((grads, metrics), AXIS, self.bucket_bytes)

  def local_view(self, local_state, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    if self.backend == "shard_map":  # the [1, ...] block of the [devices, ...] state
      local_state = jax.tree.map(lambda x: x[0], local_state)
    return local_state, key

  def local_store(self, local_state):
    if self.backend == "shard_map":
      local_state = jax.tree.map(lambda x: x[None], local_state)
    return local_state

  def _specs(self):
    """shard_map specs of the state: replicated but for the local pipeline state (per device)."""
    return {"step": P(), "params": P(), "opt_state": P(), "step_key": P(),
            "pipeline": {"local": P(AXIS), "central": P()}}

  def _sharded_chunk(self, state, data, indices, num_updates: int, segments=None):
    chunk = jax.shard_map(functools.partial(self._run_chunk, num_updates=num_updates,
                                            segments=segments),
                          mesh=self.mesh, in_specs=(self._specs(), P(), P(None, AXIS)),
                          out_specs=(self._specs(), P()), check_vma=True)
    return chunk(state, data, indices)

  # -- host side -------------------------------------------------------------------------------
  def shardings(self, state):
    """Where each leaf of the state lives: replicated, but the local pipeline state per device."""
    out = jax.tree.map(lambda _: self._replicated, state)
    out["pipeline"]["local"] = jax.tree.map(lambda _: self._local, state["pipeline"]["local"])
    return out

  def init(self, rng):
    # through host memory: every process computes the same values, and a global array is built
    # from each process's own copy (no cross-process transfer)
    state = jax.device_get(self.initial_state(rng))
    return jax.device_put(state, self.shardings(state))

  def params(self, state):
    return mesh_lib.local_copy(state["params"])

  def batch_shards(self) -> int:
    return self.num_devices

  def _call(self, state, idx, num_updates: int, segments):
    # at most one chunk in flight beyond the one being collected: the train loop reads each
    # chunk's metrics right after queueing the next, which bounds how many collectives are
    # queued (back-to-back collectives on emulated CPU devices abort; see the sharp edges)
    if self.backend == "pmap":
      return self._run_pmap(state, idx, num_updates, segments)
    if idx is not None:
      idx = jax.device_put(idx, self._indices_sharding)
    return self._chunk(state, self.data, idx, num_updates, segments)

  def communication(self, step: int, network=None) -> dict[str, float]:
    """`syncs`, `bytes_sent` (what one device sends over its link) and `sim_time` after `step`
    updates: each update is
    compute_time plus one all-reduce of the gradient (an all-gather of the compressed payloads
    when config.compression is on), priced by pdist/network.py: this run's config.network, or
    `network` (a network.Network: the same run priced on other links)."""
    n, net = self.num_devices, network or self.network
    if self.compressed:
      exchange = net.all_gather(n * self.gradient_bytes, n)
      sent = net.all_gather_sent(n * self.gradient_bytes, n)
    else:
      exchange = net.all_reduce(self.gradient_bytes, n)
      sent = net.all_reduce_sent(self.gradient_bytes, n)
    return {"syncs": float(step), "bytes_sent": float(step * sent),
            "sim_time": step * (self.compute_time + exchange)}

  def host_metrics(self, metrics, step: int) -> dict[str, float]:
    return {**super().host_metrics(metrics, step), **self.communication(step)}

  def public_row_keys(self):
    return ("syncs", "bytes_sent", "sim_time")

  def _stack_on_devices(self, x):
    """One copy of host array x per device, as a [devices, ...] array (pmap's layout)."""
    devices = list(self.mesh.devices.flat)
    return jax.make_array_from_single_device_arrays(
        (len(devices),) + x.shape, NamedSharding(self.mesh, P(AXIS)),
        [jax.device_put(x[None], d) for d in devices])

  def _run_pmap(self, state, idx, num_updates: int, segments):
    n = self.num_devices
    if segments not in self._pmapped:
      self._pmapped[segments] = jax.pmap(
          lambda s, d, i: self._run_chunk(s, d, i, num_updates, segments), axis_name=AXIS,
          devices=list(self.mesh.devices.flat))
    stacking = NamedSharding(self.mesh, P(AXIS))
    local = state["pipeline"]["local"]  # already one slice per device
    stacked = jax.tree.map(
        lambda x: jax.device_put(jnp.broadcast_to(x, (n,) + x.shape), stacking),
        dict(state, pipeline=dict(state["pipeline"], local=())))
    stacked["pipeline"]["local"] = local
    if idx is not None:  # [steps, B] -> [devices, steps, B/devices]: device d gets slice d
      idx = jax.tree.map(lambda a: jax.device_put(
          a.reshape(a.shape[0], n, -1).transpose(1, 0, 2), stacking), idx)
    out, metrics = self._pmapped[segments](stacked, self.data, idx)
    local = out["pipeline"]["local"]
    state = jax.tree.map(lambda x: x[0], dict(out, pipeline=dict(out["pipeline"], local=())))
    state = jax.device_put(state, self._replicated)
    state["pipeline"]["local"] = jax.device_put(local, self._local)
    return state, jax.tree.map(lambda v: v[0], metrics)


def _bytes(x) -> int:
  return int(x.size) * x.dtype.itemsize


class Sharded(Sync):
  """`sync` on the named mesh data x fsdp x tensor (pdist/parallel/layout.py): `single`'s update
  compiled with jax.jit over the mesh, the batch split over data x fsdp, parameters, gradients and
  optimizer state placed by the layout's rules (ZeRO stage config.sync.zero along fsdp, Megatron
  column / row pairs along tensor); XLA inserts the collectives those placements imply."""

  dense_layers = None   # the MLP's Dense layer count, when the parameters do not show it

  def __init__(self, config, task, pipeline=None):
    flat = list(mesh_lib.data_mesh(config.sync.devices).devices.flat)   # checks the count
    self.sizes = layout_lib.mesh_sizes(config, len(flat))
    self.mesh = layout_lib.build_mesh(flat, self.sizes)
    self.num_devices = len(flat)
    self.backend = "jit"
    self.bucket_bytes = 0
    shards = self.sizes["data"] * self.sizes["fsdp"]
    b, a = config.data.batch_size, config.optim.accumulate_steps
    if b % shards:
      raise ConfigError(f"config.data.batch_size={b} is not divisible by data x fsdp = {shards}, "
                        f"the mesh axes the batch is split over ({self.sizes})")
    if (b // shards) % a:
      raise ConfigError(f"the per-device batch {b // shards} is not divisible by "
                        f"config.optim.accumulate_steps={a}")
    self._replicated = NamedSharding(self.mesh, P())
    self._batch = NamedSharding(self.mesh, P(layout_lib.BATCH))
    self._indices_sharding = NamedSharding(self.mesh, P(None, layout_lib.BATCH))
    self._local = self._replicated
    Single.__init__(self, config, task, device=flat[0], pipeline=pipeline)
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    self.layout = layout_lib.Layout(self.mesh, self.sizes, int(config.sync.zero), shapes, self.tx,
                                    layers=self.dense_layers)
    self.network = network_lib.Network(config.network)
    self.compute_time = float(config.sync.compute_time)
    self.gradient_bytes = sum(_bytes(x) for x in jax.tree.leaves(shapes))
    self.compressed = False
    self._chunk = jax.jit(self._run_chunk, static_argnums=(3, 4), donate_argnums=(0,))
    self._gather = jax.jit(lambda tree: tree, out_shardings=self._replicated)

  # the update is single's: no per-device gradient, no explicit all-reduce
  gradients = Single.gradients
  aggregate = Single.aggregate
  local_view = Single.local_view
  local_store = Single.local_store

  def local_copies(self) -> int:
    return 0

  _last_call = None   # (indices, num_updates, segments) of the last compiled call

  def _call(self, state, idx, num_updates: int, segments):
    if idx is not None:
      idx = jax.device_put(idx, self._indices_sharding)
    self._last_call = (idx, num_updates, segments)
    return self._chunk(state, self.data, idx, num_updates, segments)

  def batch_shards(self) -> int:
    return 1   # the math is the global batch's (single's); the mesh only places it

  def batch_pieces(self) -> int:
    return self.sizes["data"] * self.sizes["fsdp"]   # but its rows are split over data x fsdp

  def place(self, what: str, tree):
    if what == "update_params":
      return tree
    if what == "batch":
      return jax.lax.with_sharding_constraint(tree, jax.tree.map(lambda _: self._batch, tree))
    specs = {"grads": self.layout.grad_specs, "params": self.layout.param_specs,
             "opt_state": self.layout.opt_specs}[what]
    return self.layout.constrain(tree, specs)

  def shardings(self, state):
    out = jax.tree.map(lambda _: self._replicated, state)
    out["params"] = self.layout.shardings(self.layout.param_specs)
    out["opt_state"] = self.layout.shardings(self.layout.opt_specs)
    return out

  def params(self, state):
    return mesh_lib.local_copy(self._gather(state["params"]))

  def communication(self, step: int, network=None) -> dict[str, float]:
    """Each update: the gradient's reduction over data x fsdp as a ring all-reduce (ZeRO 1 and
    2: a reduce-scatter then an all-gather of the updated shards, the same volume); ZeRO-3: two
    all-gathers of the parameters along fsdp (forward, backward) and a reduce-scatter of the
    gradient, then an all-reduce of each shard along data. Tensor parallelism's activation
    all-reduces are not priced (they depend on the batch, not the parameters)."""
    net = network or self.network
    p, f, d = self.gradient_bytes // max(1, self.sizes["tensor"]), self.sizes["fsdp"], \
        self.sizes["data"]
    if self.layout.zero >= 3:
      exchange = 2 * net.all_gather(p, f) + net.reduce_scatter(p, f) + net.all_reduce(p / f, d)
      sent = (2 * net.all_gather_sent(p, f) + net.reduce_scatter_sent(p, f)
              + net.all_reduce_sent(p / f, d))
    else:
      exchange = net.all_reduce(p, f * d)
      sent = net.all_reduce_sent(p, f * d)
    return {"syncs": float(step), "bytes_sent": float(step * sent),
            "sim_time": step * (self.compute_time + exchange)}

  def describe(self, state) -> dict:
    return {**super().describe(state), "layout": self.layout.describe(),
            "memory": self.memory(state)}

  def memory(self, state) -> dict:
    """Bytes per device of the state's parts, from the arrays' own shards on this process's first
    device (the gradient's from its layout: it exists only inside the step)."""
    def per_device(tree):
      return sum(_bytes(x.addressable_shards[0].data) for x in jax.tree.leaves(tree))
    return {"params_bytes_per_device": per_device(state["params"]),
            "optimizer_bytes_per_device": per_device(state["opt_state"]),
            "gradient_bytes_per_device": self.layout.per_device(state["params"],
                                                                self.layout.grad_specs),
            "peak_bytes_per_device": self.peak_bytes(state),
            "params_bytes_total": sum(_bytes(x) for x in jax.tree.leaves(state["params"]))}

  def peak_bytes(self, state) -> int:
    """XLA's memory analysis of the run's last compiled call (one update if none ran yet) on
    this mesh (the program each device runs): arguments + outputs - the outputs that reuse
    (alias) donated arguments + temporaries, the most bytes the step can hold live on a device.
    Lowering the last call's arguments again finds its executable in jax's cache: no compile."""
    if self._last_call is not None:
      idx, num_updates, segments = self._last_call
    else:
      idx, num_updates, segments = self.indices(int(jax.device_get(state["step"])), 1), 1, None
      if idx is not None:
        idx = jax.device_put(idx, self._indices_sharding)
    stats = self._chunk.lower(state, self.data, idx, num_updates,
                              segments).compile().memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


class Zero(Sharded):
  """ZeRO along fsdp with the textbook collectives, written out in `jax.shard_map` (data x fsdp,
  no tensor axis): each device holds its block of what the stage shards (the leaf's largest
  dimension fsdp divides; other leaves whole) and takes the gradient of its slice of the batch.

    stage 1  gradient all-reduced (pmean over data x fsdp), the optimizer updates this device's
             block, the updated blocks all-gathered along fsdp;
    stage 2  gradient reduce-scattered along fsdp (then all-reduced along data), the same update
             and all-gather;
    stage 3  parameters stored as blocks: all-gathered along fsdp where they are used, the
             gradient reduce-scattered by the all-gather's transpose. The textbook gathers again
             for the backward pass (jax.checkpoint here keeps every activation but the gathered
             parameters); XLA's CPU backend merges that gather with the forward one (CSE), so
             the compiled step keeps the gathered parameters and moves ~2x, not ~3x, the
             parameter bytes.

  tests/test_sharded.py reads the compiled program's collectives and their bytes. Leaves fsdp does not
  divide are all-reduced like data parallelism's. The optimizer must be elementwise on blocks:
  config.optim.grad_clip (a global norm) and DP-SGD take the GSPMD path (`Sharded`) instead."""

  MANUAL = ("data", "fsdp")

  def __init__(self, config, task, pipeline=None):
    super().__init__(config, task, pipeline=pipeline)
    none = -1
    self.fdims = jax.tree.map(lambda spec: list(spec).index("fsdp") if "fsdp" in spec else none,
                              self.layout.sharded_specs, is_leaf=lambda s: isinstance(s, P))
    self.f = self.sizes["fsdp"]
    if self.layout.zero >= 3:
      gathered_loss = jax.checkpoint(
          lambda blocks, batch, rng: task.loss(self._gather_blocks(blocks), batch, rng),
          policy=jax.checkpoint_policies.save_anything_except_these_names("fsdp_gathered"))
      self._grad_blocks = base_lib.grad_fn(dataclasses.replace(task, loss=gathered_loss),
                                           config.optim.accumulate_steps)
    self._chunk = jax.jit(self._manual_chunk, static_argnums=(3, 4), donate_argnums=(0,))

  def _gather_blocks(self, blocks):
    def gather(x, d):
      if d < 0:
        return x
      full = jax.lax.all_gather(x, "fsdp", axis=d, tiled=True)
      return checkpoint_name(full, "fsdp_gathered")
    return jax.tree.map(gather, blocks, self.fdims)

  def _block(self, x, d):
    """This device's block of the whole leaf x along dimension d (no communication)."""
    size = x.shape[d] // self.f
    return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index("fsdp") * size, size, axis=d)

  def gradients(self, params, batch, rng):
    # each device's own gradient: differentiate copies that vary along the axes the batch is
    # split over (a gradient w.r.t. an invariant input would come back summed; see Sync)
    if self.layout.zero >= 3:
      blocks = jax.tree.map(lambda x, d: jax.lax.pcast(
          x, ("data",) if d >= 0 else self.MANUAL, to="varying"), params, self.fdims)
      return self._grad_blocks(blocks, batch, rng)
    return self._grad(jax.lax.pcast(params, self.MANUAL, to="varying"), batch, rng)

  def aggregate(self, grads, metrics):
    zero, f = self.layout.zero, self.f

    def mean(x, axes):   # an axis of size 1 needs no collective
      axes = tuple(a for a in axes if self.sizes[a] > 1)
      return jax.lax.pmean(x, axes) if axes else x

    def reduce(g, d):
      if d < 0:
        return mean(g, self.MANUAL)
      if zero >= 3:     # already summed and scattered along fsdp by the all-gather's transpose
        return mean(g / f, ("data",))
      if zero == 2:
        return mean(jax.lax.psum_scatter(g, "fsdp", scatter_dimension=d, tiled=True) / f,
                    ("data",))
      return self._block(mean(g, self.MANUAL), d)   # stage 1: all-reduce, keep a block
    return jax.tree.map(reduce, grads, self.fdims), mean(metrics, self.MANUAL)

  def place(self, what: str, tree):
    if self.layout.zero >= 3 or what not in ("update_params", "params"):
      return tree
    if what == "update_params":   # stages 1-2: the optimizer updates this device's block
      return jax.tree.map(lambda x, d: x if d < 0 else self._block(x, d), tree, self.fdims)
    return jax.tree.map(lambda x, d: x if d < 0 else jax.lax.all_gather(
        x, "fsdp", axis=d, tiled=True), tree, self.fdims)

  def _manual_chunk(self, state, data, indices, num_updates: int, segments=None):
    specs = jax.tree.map(lambda _: P(), state)
    specs["params"] = self.layout.param_specs
    specs["opt_state"] = self.layout.opt_specs
    chunk = jax.shard_map(functools.partial(self._run_chunk, num_updates=num_updates,
                                            segments=segments),
                          mesh=self.mesh, in_specs=(specs, P(), P(None, layout_lib.BATCH)),
                          out_specs=(specs, P()), check_vma=False)
    return chunk(state, data, indices)


class Pipelined(Sharded):
  """`sync` with a pipeline axis: the model's identical blocks stacked and cut into stages along
  `pipeline`, each batch run through them as micro-batches on GPipe's schedule
  (pdist/parallel/stages.py), the rest of the update `Sharded`'s (data, fsdp and tensor
  placements compose). The state holds the blocks stacked ([L, ...] under
  layout.STACKED); `params(state)` gives the model's own parameter names back."""

  def __init__(self, config, task, pipeline=None):
    devices = mesh_lib.data_mesh(config.sync.devices).devices.size
    sizes = layout_lib.mesh_sizes(config, devices)
    self.stages = sizes["pipeline"]
    self.microbatches = int(config.sync.microbatches) or self.stages
    self.parts = stages_lib.parts(task.module)   # refuses models it cannot cut
    names = self.parts.blocks
    stages_lib.check_blocks(self.stages, len(names))
    rows = config.data.batch_size // (sizes["data"] * sizes["fsdp"])
    rows //= max(1, config.optim.accumulate_steps)
    if rows % self.microbatches:
      raise ConfigError(f"config.sync.microbatches={self.microbatches}: each data shard's batch "
                        f"of {rows} rows (config.data.batch_size / (data x fsdp) / "
                        "config.optim.accumulate_steps) must be a multiple of it")
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    self.dense_layers = layout_lib._top_dense_layers(shapes)
    def init(rng):
      return stages_lib.stack(task.init(rng), names)

    loss, per_example_loss = task.losses_for(self._apply)
    staged = dataclasses.replace(task, init=jax.jit(init), loss=loss,
                                 per_example_loss=per_example_loss)
    super().__init__(config, staged, pipeline=pipeline)
    self.bubble_theory = stages_lib.bubble_theory(self.stages, self.microbatches)
    # the idle fraction of the schedule table gpipe runs (its -1 slots)
    self.bubble_schedule = stages_lib.bubble(stages_lib.schedule(self.stages, self.microbatches))
    self.accumulate = max(1, int(config.optim.accumulate_steps))
    # one micro-batch's activations on one data shard: what a stage sends its neighbour
    rest = {k: v for k, v in shapes.items() if k not in names}
    sample = jax.ShapeDtypeStruct((rows // self.microbatches,) + task.dataset.input_shape,
                                  task.dataset.input_dtype)
    h = jax.eval_shape(self.parts.pre, rest, sample)
    self.activation_bytes = int(h.size) * h.dtype.itemsize
    blocks = sum(_bytes(x) for x in jax.tree.leaves([shapes[n] for n in names]))
    self.gradient_bytes -= blocks - blocks // self.stages   # one stage's share of the blocks

  def _apply(self, params, x):
    rest = {k: v for k, v in params.items() if k != layout_lib.STACKED}
    # ZeRO-3: a stage's blocks are gathered along fsdp once, before the ticks (not at each one)
    blocks = self.layout.constrain(params[layout_lib.STACKED],
                                   self.layout.tensor_specs[layout_lib.STACKED])
    manual = tuple(a for a in layout_lib.BATCH if self.sizes[a] > 1)

    def run(rest, blocks, x):
      h = self.parts.pre(rest, x)
      y = stages_lib.gpipe(self.parts.block, blocks, h, self.stages, self.microbatches,
                           constrain=functools.partial(self._constrain, manual=bool(manual)))
      return self.parts.post(rest, y)
    if not manual:
      return run(rest, blocks, x)
    # each data shard runs its rows through the stages by itself (data x fsdp manual, pipeline
    # and tensor left to GSPMD): its block gradients add up over the ticks on the shard, and
    # the transpose of the replicated inputs reduces them over data x fsdp once, after the loop
    return jax.shard_map(run, mesh=self.mesh, in_specs=(P(), P(), P(manual)),
                         out_specs=P(manual), axis_names=set(manual), check_vma=False)(
                             rest, blocks, x)

  def _constrain(self, a, stage_dim: int, manual: bool = False):
    """Dimension stage_dim along `pipeline`, the next (micro-batch rows) along data x fsdp
    (inside the shard_map over data x fsdp: only `pipeline`)."""
    if manual:
      spec = P(*([None] * stage_dim), "pipeline")
      return jax.lax.with_sharding_constraint(
          a, NamedSharding(jax.sharding.get_abstract_mesh(), spec))
    spec = P(*([None] * stage_dim), "pipeline", layout_lib.BATCH)
    return jax.lax.with_sharding_constraint(a, NamedSharding(self.mesh, spec))

  def params(self, state):
    return stages_lib.unstack(super().params(state), self.parts.blocks)

  def communication(self, step: int, network=None) -> dict[str, float]:
    """Sharded's reduction of the gradient over data x fsdp, for one stage's share of the
    parameters, plus the pipeline's sends: each of the m + p - 1 ticks forward and backward
    (of each of config.optim.accumulate_steps passes) moves one micro-batch's activations
    (gradients) to the neighbouring stage."""
    net = network or self.network
    out = super().communication(step, net)
    ticks = self.accumulate * (self.microbatches + self.stages - 1)   # the pipeline runs A times
    out["sim_time"] += step * 2 * ticks * net.message(self.activation_bytes)
    out["bytes_sent"] += float(step * 2 * ticks * self.activation_bytes)
    return out

  def host_metrics(self, metrics, step: int) -> dict[str, float]:
    return {**super().host_metrics(metrics, step), "pipeline_bubble": self.bubble_schedule,
            "pipeline_bubble_theory": self.bubble_theory}

  def public_row_keys(self):
    return (*super().public_row_keys(), "pipeline_bubble", "pipeline_bubble_theory")

  def describe(self, state) -> dict:
    return {**super().describe(state), "pipeline": {
        "stages": self.stages, "microbatches": self.microbatches, "schedule": "gpipe",
        "blocks_per_stage": len(self.parts.blocks) // self.stages,
        "bubble": self.bubble_schedule, "bubble_theory": self.bubble_theory}}
