"""Will the run fit? The bytes a run's state needs, from shapes alone, against the memory free
where it lives: checked before anything is built, so a run that cannot fit is one sentence
instead of minutes of growing memory or a raw XLA traceback.

`estimate(config, task)` counts, with jax.eval_shape of the task's init and of the optimizer's
init (nothing is allocated):

  parameters + optimizer state + gradients, for each copy the strategy holds at once:
    train.seeds > 1       one of each per seed (vmapped);
    codistill             one of each per replica, plus the replica's stale copy that the others
                          read (group='ps': plus each group server's gradient slot per worker);
    ps (emulator)         one gradient slot per worker beside the server's state (async, ssp);
    sync, local, gossip   on a CPU host one of each per device (emulated devices share this
                          host's memory; local: its outer parameters and outer state once);
    sync on a named mesh  each device's share of each (parallel/layout.py's specs: ZeRO stages
                          along fsdp, tensor's splits, a pipeline's stages), per device of this
                          host on a CPU host, one device's on an accelerator;
    federated             parameters and a gradient per client vmapped at once (client_group,
                          else clients_per_round), SCAFFOLD's control per client;
  plus the training set placed on the device (once; per device for sync on a CPU host).

Not counted, so the estimate is a lower bound: activations and XLA's temporaries (they depend on
the batch, the model and XLA's fusion), the evaluation set, a checkpoint's device-side copy
of the state while it is saved in the background, the gradient pipeline's state
(compression's error feedback: a parameter-sized residual per sender), gradient accumulation's
running sum, a distillation teacher, the compiled programs and the runtime itself; for ps on
Ray the worker processes (each holds the data and a copy of the parameters and gradient).

`check` refuses (ConfigError) a run whose estimate exceeds what is free: an accelerator's
memory_stats() (bytes_limit - bytes_in_use), or on a CPU host the least of /proc/meminfo's
MemAvailable (os.sysconf's available pages without it) and the cgroup's limit minus its
non-reclaimable usage. `reported()` turns XLA's RESOURCE_EXHAUSTED, should it still come, into
one sentence (OutOfMemory, a TrainingError: exit status 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import jax

from pdist import optim
from pdist.parallel import layout as layout_lib
from pdist.errors import TrainingError
from pdist.ps.sharding import tree_bytes
from pdist.registry import MODELS, ConfigError, get


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes of one copy of the parameters, optimizer state and gradients, and of the training
  set; the strategy holds `copies` x `per_copy` + `fixed` bytes at once, `copies` set by
  config.`field` (None: nothing to lower but the model or the data)."""
  parameters: int
  optimizer: int
  gradients: int
  data: int
  copies: int
  per_copy: int
  fixed: int
  field: str | None

  @property
  def total(self) -> int:
    return self.copies * self.per_copy + self.fixed

  def copies_that_fit(self, available: int) -> int:
    """How many copies fit in `available` bytes beside the fixed part."""
    return max(0, (available - self.fixed) // self.per_copy) if self.per_copy else self.copies

  def describe(self) -> str:
    many = (f"{self.copies} x {_short(self.per_copy)} for config.{self.field}={self.copies} "
            f"plus {_short(self.fixed)}, " if self.field and self.copies > 1 else "")
    return (f"{many}from parameters {_short(self.parameters)}, optimizer state "
            f"{_short(self.optimizer)}, gradients {_short(self.gradients)} and training data "
            f"{_short(self.data)}")


def _layout(config, p: int, o: int, g: int, d: int) -> tuple[int, int, int, str | None]:
  """(copies, bytes per copy, fixed bytes, the field that sets copies) of the strategy's state,
  from one copy's parameters p, optimizer state o, gradients g and the data d."""
  one = p + o + g
  if config.train.seeds > 1:
    return int(config.train.seeds), one, d, "train.seeds"
  name = config.strategy
  if name == "codistill":
    each = 2 * p + o + g                          # its parameters, their stale copy, opt, grad
    if config.codistill.group == "ps":
      each += int(config.ps.workers) * g          # its server's in-flight gradient slots
    return int(config.codistill.replicas), each, d, "codistill.replicas"
  if name == "ps" and config.ps.backend == "emulator" and config.ps.consistency != "bsp":
    return int(config.ps.workers), g, one + d, "ps.workers"
  if name in ("sync", "local", "gossip") and jax.default_backend() == "cpu":
    # this host's own devices (the mesh may span several processes, each with its own memory);
    # local and gossip: a replica each, and local's outer parameters and outer state besides
    devices = min(int(config.sync.devices) or jax.device_count(), jax.local_device_count())
    return devices, one + d, (2 * p if name == "local" else 0), "sync.devices"
  if name == "federated":
    f = config.federated
    at_once = int(f.client_group) or int(f.clients_per_round)
    each = p + g + (p if f.client_momentum else 0)  # a client's parameters, gradient, momentum
    fixed = one + d + ((int(f.clients) + 1) * p if f.algorithm == "scaffold" else 0)
    field = "federated.client_group" if f.client_group else "federated.clients_per_round"
    return at_once, each, fixed, field
  return 1, one, d, None


def estimate(config, task) -> Estimate:
  """The bytes `config`'s strategy keeps for `task` (see the module docstring for what is
  counted and what is not); from shapes only, nothing is allocated."""
  params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  p = tree_bytes(params)
  o = tree_bytes(jax.eval_shape(optim.build(config).init, params))
  d = 0
  if task.has_data:
    d = int(task.dataset.x_train.nbytes) + int(task.dataset.y_train.nbytes)
  if config.strategy == "sync" and config.train.seeds == 1 and layout_lib.is_sharded(config):
    return _sharded(config, task, params, d)
  copies, per_copy, fixed, field = _layout(config, p, o, p, d)
  return Estimate(p, o, p, d, copies, per_copy, fixed, field)


def _sharded(config, task, params, d: int) -> Estimate:
  """`sync` on a named mesh: one device's share of the parameters, optimizer state and
  gradients as the layout places them (the data replicated on every device)."""
  from pdist.parallel import stages
  devices = int(config.sync.devices) or jax.device_count()
  sizes = layout_lib.mesh_sizes(config, devices)
  layers = None
  if sizes["pipeline"] > 1:   # the blocks stored stacked, [L, ...] along `pipeline`
    layers = layout_lib._top_dense_layers(params)
    names = stages.parts(task.module).blocks
    params = jax.eval_shape(lambda q: stages.stack(q, names), params)
  tx = optim.build(config)
  lay = layout_lib.Layout(None, sizes, int(config.sync.zero), params, tx, layers=layers)
  p = lay.per_device(params, lay.param_specs)
  o = lay.per_device(jax.eval_shape(tx.init, params), lay.opt_specs)
  g = lay.per_device(params, lay.grad_specs)
  here = min(devices, jax.local_device_count()) if jax.default_backend() == "cpu" else 1
  return Estimate(p, o, g, d, here, p + o + g + d, 0, "sync.devices")


def _meminfo_available() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, AttributeError):
    return None


def _read_int(path: str) -> int | None:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None


def _cgroup_available() -> int | None:
  """The cgroup's memory limit minus its usage (page cache it could drop not counted as used);
  None without a limit."""
  for folder, limit, usage, inactive in (
      ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
      ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
       "total_inactive_file")):
    cap, used = _read_int(os.path.join(folder, limit)), _read_int(os.path.join(folder, usage))
    if cap is None or used is None or cap >= 1 << 60:   # "max", or v1's "no limit"
      continue
    reclaimable = 0
    try:
      with open(os.path.join(folder, "memory.stat")) as f:
        for line in f:
          key, _, value = line.partition(" ")
          if key == inactive:
            reclaimable = int(value)
    except (OSError, ValueError):
      pass
    return max(0, cap - used + reclaimable)
  return None


def available_bytes() -> tuple[int | None, str]:
  """(bytes free where the run's state lives, where that is); None when it cannot be told."""
  device = jax.local_devices()[0]
  if device.platform != "cpu":
    try:
      stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 -- a backend without memory statistics
      stats = {}
    if "bytes_limit" not in stats:
      return None, f"{device.platform} device memory"
    return (int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)),
            f"the memory of {device.platform} device {device.id} ({device.device_kind})")
  known = [b for b in (_meminfo_available(), _cgroup_available()) if b is not None]
  return (min(known) if known else None), "this host's memory"


def _model_fields(config) -> str:
  """The model's size fields and their values, e.g. "config.model.hidden=(256, 256)"."""
  reads = MODELS.entry(config.model.name).reads if config.model.name in MODELS else ()
  fields = [f for f in reads if f.startswith("model.")]
  if not fields:
    return f"config.model (config.model.name='{config.model.name}')"
  return ", ".join(f"config.{f}={get(config, f)}" for f in fields)


def check(config, task) -> Estimate:
  """Raises ConfigError, one sentence with the estimated and the available bytes and the field
  to change, when the run's state cannot fit in the memory free where it lives; else returns
  the estimate."""
  est = estimate(config, task)
  available, where = available_bytes()
  if available is None or est.total <= available:
    return est
  needs = f"needs at least {est.total:,} bytes ({_short(est.total)}: {est.describe()})"
  have = f"{_size(available)} {'is' if available == 1 else 'are'} free in {where}"
  if est.field and est.copies > 1 and est.copies_that_fit(available) >= 1:
    fit = est.copies_that_fit(available)
    raise ConfigError(f"config.{est.field}={est.copies} {needs} but {have}; at most {fit} fit, "
                      f"so lower config.{est.field}")
  if 2 * est.data > est.total:   # most of it is the data
    raise ConfigError(f"the run {needs} but {have}; most of it is the training set, so lower "
                      f"config.data.num_train (now {config.data.num_train})")
  raise ConfigError(f"the run {needs} but {have}; make the model smaller: {_model_fields(config)}")


class OutOfMemory(TrainingError):
  """XLA could not allocate what the run asked for (exit status 3)."""


def exhausted(error: BaseException) -> bool:
  """Whether `error` is XLA's RESOURCE_EXHAUSTED (out of device or host memory)."""
  return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


@contextlib.contextmanager
def reported():
  """Turns XLA's RESOURCE_EXHAUSTED inside the block into OutOfMemory: one sentence, no
  traceback. The estimate checked before the run is a lower bound (see the module docstring),
  so this can still happen: most often through activations."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if not exhausted(e):
      raise
    text = str(e).strip().splitlines()[0] if str(e).strip() else "RESOURCE_EXHAUSTED"
    text = text.replace("RESOURCE_EXHAUSTED: ", "").rstrip(".")
    raise OutOfMemory(f"XLA ran out of memory ({text}; RESOURCE_EXHAUSTED), beyond the "
                      "parameters, optimizer state, gradients and data checked before the run "
                      "(activations grow with config.data.batch_size): lower "
                      "config.data.batch_size or make the model smaller") from None


def _short(n: int) -> str:
  """1234567 -> '1.2 MB' (decimal units)."""
  for unit, scale in (("EB", 10**18), ("PB", 10**15), ("TB", 10**12), ("GB", 10**9),
                      ("MB", 10**6), ("kB", 10**3)):
    if n >= scale:
      return f"{n / scale:.1f} {unit}"
  return f"{n} bytes"


def _size(n: int) -> str:
  """1234567 -> '1,234,567 bytes (1.2 MB)'."""
  short = _short(n)
  return f"{n:,} bytes" + ("" if short.endswith("bytes") else f" ({short})")
