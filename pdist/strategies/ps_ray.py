"""`ps` on real processes: `--config.ps.backend=ray`.

The same parameter server as the emulator (strategies/ps.py), but the K workers are Ray actors —
separate processes, each computing gradients with JAX on its own data partition — and the order
of events is whatever the real clocks give. The server stays in this process:

  submit: worker w gets the current parameters and its iteration number, which picks its batch
          (on one machine through a shared-memory row of its own; on a cluster as one object in
          Ray's store per version, shared by every pull of that version)
  wait:   `ray.wait` returns the first finished gradient; async: apply it (server.ParameterServer,
          the same optimizer, shard by shard, lr / staleness under staleness_lr=inverse) and hand
          that worker the new version; ssp: the same, but a worker more than max_staleness clocks
          ahead of the slowest waits for it; bsp: a round applies the mean of the first
          workers - backup_workers gradients of that round, later ones are dropped.
  faults: a worker whose process dies (ps.failures.at=((seconds, worker), ...) kills one that
          many wall-clock seconds after every worker was ready; anything else may too) loses
          its in-flight gradient; Ray restarts the process and it rejoins with fresh parameters.

Every pull, applied update and lost gradient is a *record*; train.run appends them to
WORKDIR/trace.jsonl. The math of a record is a pure function of the parameters it names, so
`python -m pdist.replay WORKDIR` recomputes the run from its trace in one process with the same
compiled programs and gets the same parameters bit for bit: a real run, non-deterministic as it
is, becomes a reproducible artefact, and a resumed run is its trace's replay. One local Ray
instance is started and stopped by the run (bound to 127.0.0.1, no dashboard) unless
config.ps.ray_address names a cluster. config.ps.ray_tls='auto' (or 'files' with a cluster's
certificates) runs all of Ray's gRPC with mutual TLS (pdist/tls.py).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pdist import optim
from pdist import tls
from pdist.data import WorkerSampler
from pdist.ps import server as server_lib
from pdist.ps import sharding
from pdist.ps.simulator import staleness_summary
from pdist.errors import TrainingError
from pdist.registry import ConfigError
from pdist.strategies import base
from pdist.tasks import Task


def _simulated_fields(ps) -> list[str]:
  """The timing-model fields of config.ps set away from their defaults."""
  import ml_collections  # noqa: PLC0415

  from pdist.ps import timing  # noqa: PLC0415
  defaults = timing.add_timing_fields(ml_collections.ConfigDict()).to_dict()
  out = []
  for key, value in defaults.items():
    mine = ps[key].to_dict() if isinstance(value, dict) else ps[key]
    if mine != value:
      out.append(key)
  if ps.failures.restart_delay != 1.0:  # Ray restarts a process as soon as it can
    out.append("failures.restart_delay")
  return out


def validate_ray(config) -> None:
  """What the real backend cannot do (yet), each in one sentence."""
  ps = config.ps
  if config.compression.name != "none" or config.privacy.mechanism != "none":
    raise ConfigError("config.ps.backend='ray' runs uncompressed, non-private gradients only; "
                      "set config.compression.name='none' and config.privacy.mechanism='none' "
                      "(the emulator, backend='emulator', runs both)")
  if ps.failures.rate:
    raise ConfigError("config.ps.failures.rate draws crashes in simulated time; with "
                      "config.ps.backend='ray' script them in seconds of wall-clock time with "
                      "config.ps.failures.at=((seconds, worker), ...)")
  if ps.ray_worker_cpus <= 0:
    raise ConfigError(f"config.ps.ray_worker_cpus must be positive, got {ps.ray_worker_cpus}")
  if ps.ray_worker_gpus < 0:
    raise ConfigError(f"config.ps.ray_worker_gpus must be >= 0, got {ps.ray_worker_gpus}")
  tls.validate(config)   # ray_tls and, for 'files', that its three files are usable


# -- the workers' side (also used by pdist.replay, in one process) -------------------------------

class Worker:
  """Worker k of a run: the gradient of its `iteration`-th batch as one compiled call (batch
  gathered from the device-resident training set, rng folded, gradient taken), the emulator's
  batches (WorkerSampler) and rngs (fold_in(fold_in(step_key, k), iteration)). The real
  backend's actors and pdist.replay both compute with it, so they run the same program."""

  def __init__(self, k: int, grad, data, sampler, step_key):
    self.id, self._grad, self._data, self._sampler = k, grad, data, sampler
    self._key = jax.random.fold_in(step_key, k)

  def gradient(self, params, iteration: int):
    """(gradient, {"loss", **task metrics}) at `params`."""
    idx = None if self._sampler is None else self._sampler.indices(self.id, iteration)
    grads, (loss, aux) = self._grad(params, self._data, idx, self._key, np.int32(iteration))
    return grads, {"loss": loss, **aux}

  def compute(self, params, iteration: int):
    return self.gradient(params, iteration)[0]


def workers_of(config, task: Task, ids) -> dict[int, Worker]:
  """`Worker`s for the ids `ids` of this config, sharing one compiled gradient."""
  grad = base.grad_fn(task, config.optim.accumulate_steps)
  arrays = base.training_arrays(task)
  data = None if arrays is None else jax.device_put(arrays)
  sampler = None if arrays is None else WorkerSampler(
      config.data, task.dataset, config.ps.workers, config.train.seed, config.data.batch_size)
  _, step_key = base.init_keys(jax.random.PRNGKey(config.train.seed))

  @jax.jit
  def fused(params, data, idx, key, iteration):
    batch = None if data is None else base.gather_batch(data, idx)
    return grad(params, batch, jax.random.fold_in(key, iteration))

  return {k: Worker(k, fused, data, sampler, step_key) for k in ids}


class Flat:
  """A parameter-shaped pytree as one flat vector and back (exact copies, on the host): what goes
  between the processes, one buffer instead of one per leaf (a put of the MLP's six arrays in
  Ray's object store costs about twice that of one). numpy, not a jitted concatenate, which took ~17 ms for 2.6 MB
  on this CPU against ~0.1 ms."""

  def __init__(self, abstract):
    leaves, self.treedef = jax.tree.flatten(abstract)
    self.shapes = [tuple(x.shape) for x in leaves]
    self.dtypes = [np.dtype(x.dtype) for x in leaves]
    self.dtype = np.result_type(*self.dtypes)
    self.offsets = np.cumsum([0] + [int(np.prod(s)) for s in self.shapes])

  def ravel(self, tree, out: np.ndarray | None = None) -> np.ndarray:
    leaves = jax.device_get(jax.tree.leaves(tree))
    if out is None:
      return np.concatenate([np.ravel(x).astype(self.dtype, copy=False) for x in leaves])
    for a, b, x in zip(self.offsets[:-1], self.offsets[1:], leaves):
      out[a:b] = np.ravel(x)
    return out

  def unravel(self, vector: np.ndarray):
    return self.treedef.unflatten([
        vector[a:b].reshape(shape).astype(dtype, copy=False)
        for a, b, shape, dtype in zip(self.offsets[:-1], self.offsets[1:], self.shapes,
                                      self.dtypes)])


def _shm_root() -> str:
  """Where the shared rows live: /dev/shm (memory), else the temporary directory."""
  import tempfile  # noqa: PLC0415
  return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _shm_free_bytes() -> int:
  st = os.statvfs(_shm_root())
  return st.f_bavail * st.f_frsize


class Slots:
  """Memory shared by the processes of one machine: per worker, a row of parameters (written by
  the server before it starts the worker's next gradient) and a row of gradient (written by the
  worker before it returns). A worker's rows are touched by nobody else while its call runs,
  so they need no lock. Files under /dev/shm, mapped by every process (`np.memmap`)."""

  def __init__(self, workers: int, size: int, dtype, prefix: str | None = None):
    import uuid  # noqa: PLC0415
    mode = "w+" if prefix is None else "r+"     # the server creates them, workers map them
    if prefix is None:
      prefix = os.path.join(_shm_root(), f"pdist-ps-{uuid.uuid4().hex}")
    self.prefix, self.shape, self.dtype = prefix, (workers, size), np.dtype(dtype)
    if mode == "w+":   # the parameters and gradients in transit: this user's only (mode 0600)
      for name in ("-params", "-grads"):
        os.close(os.open(prefix + name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    self.params = np.memmap(prefix + "-params", self.dtype, mode, shape=self.shape)
    self.grads = np.memmap(prefix + "-grads", self.dtype, mode, shape=self.shape)

  def spec(self) -> tuple:
    return self.shape[0], self.shape[1], self.dtype.str, self.prefix

  def unlink(self) -> None:
    for name in ("-params", "-grads"):
      try:
        os.unlink(self.prefix + name)
      except FileNotFoundError:
        pass


class _WorkerProcess:
  """The body of a Ray actor: one worker, built from the config and the dataset."""

  def __init__(self, config, worker: int, slots: tuple | None = None, teacher=None):
    if config.ps.ray_worker_gpus:  # a share of a GPU (Ray sets CUDA_VISIBLE_DEVICES): no JAX
      os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # preallocation
    else:  # CPU workers stay off any GPU of the host (each would preallocate most of it)
      os.environ["JAX_PLATFORMS"] = "cpu"
    from pdist import data, tasks  # noqa: PLC0415
    task = tasks.build(config, data.load(config.data), teacher)   # the driver's teacher, if any
    self.id = worker
    self.worker = workers_of(config, task, [worker])[worker]
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    self.flat = Flat(abstract)
    self.slots = None if slots is None else Slots(*slots[:3], prefix=slots[3])
    jax.block_until_ready(self.worker.gradient(   # compile now, not in the first gradient
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract), 0))

  def ready(self) -> int:
    return os.getpid()

  def _timed(self, flat_params, iteration: int, out=None):
    """(flat gradient, metrics as floats, seconds it took) at the flat parameters."""
    start = time.perf_counter()
    grads, metrics = self.worker.gradient(self.flat.unravel(flat_params), iteration)
    flat = self.flat.ravel(grads, out=out)
    return flat, {k: float(v) for k, v in jax.device_get(metrics).items()}, \
        time.perf_counter() - start

  def compute(self, flat_params, iteration: int):
    """(flat gradient as numpy, metrics as floats, seconds it took)."""
    return self._timed(flat_params, iteration)

  def compute_shared(self, iteration: int):
    """`compute` through this worker's shared rows: parameters in, gradient out; returns
    (None, metrics, seconds)."""
    _, metrics, seconds = self._timed(self.slots.params[self.id], iteration,
                                      out=self.slots.grads[self.id])
    return None, metrics, seconds


# -- starting and stopping Ray -------------------------------------------------------------------

def _last_line(error) -> str:
  """The last non-empty line of an error's text (Ray's carry the remote traceback above it)."""
  lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
  return lines[-1] if lines else type(error).__name__


def _check_reachable(address: str, timeout: float = 5.0) -> None:
  import socket  # noqa: PLC0415
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
      pass
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.ps.ray_address='{address}' is not a reachable Ray cluster "
                      f"(HOST:PORT of its head, or 'auto'): {e}") from None


def start_ray(address: str, workers: int, worker_cpus: float, worker_gpus: float = 0.0):
  """The `ray` module, connected: to the cluster at `address`, or to a new local instance bound
  to 127.0.0.1 with no dashboard. Raises ConfigError when the cluster is unreachable or cannot
  place the workers."""
  if not address:
    # a single-machine instance: every server Ray starts binds to the loopback address
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
  elif "RAY_AUTH_MODE" not in os.environ and (
      os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(os.path.expanduser("~/.ray/auth_token"))):
    # Ray presents the cluster's token for address='auto' only; do the same for HOST:PORT
    os.environ["RAY_AUTH_MODE"] = "token"
  import logging  # noqa: PLC0415
  import warnings  # noqa: PLC0415

  ray = tls.import_ray()   # notes the TLS variables Ray reads once per process
  if ray.is_initialized():
    ray.shutdown()
  quiet = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
  try:
    with warnings.catch_warnings():  # Ray starts its processes by fork+exec; JAX warns of forks
      warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
      if address:
        ray.init(address=address, **quiet)
      else:
        # "local": a new instance even when RAY_ADDRESS or /tmp/ray/ray_current_cluster (left by
        # a `ray start`, also a stopped one) names another, which ray.init would join instead
        ray.init(address="local",
                 num_cpus=max(os.cpu_count() or 1, int(np.ceil(workers * worker_cpus))), **quiet)
  except (ConnectionError, RuntimeError, ValueError) as e:
    raise ConfigError(f"config.ps.ray_address='{address}': could not connect to a Ray cluster "
                      f"({str(e).splitlines()[0] if str(e) else type(e).__name__}; a cluster "
                      "started with `ray start` needs its token here: ~/.ray/auth_token or "
                      "RAY_AUTH_TOKEN)") from None
  for kind, each in (("CPU", worker_cpus), ("GPU", worker_gpus)):
    have = ray.cluster_resources().get(kind, 0.0)
    if have < workers * each:
      ray.shutdown()
      raise ConfigError(f"config.ps.workers={workers} x config.ps.ray_worker_{kind.lower()}s="
                        f"{each:g} needs {workers * each:g} {kind}s but the Ray cluster has "
                        f"{have:g}")
  return ray


def kill_schedule(at, trained_seconds: float) -> list[tuple[float, int]]:
  """failures.at's (seconds of training, worker) kills still ahead of a run that has trained
  `trained_seconds` already, as seconds from now, in order: a resumed run does not repeat the
  kills before its checkpoint."""
  return sorted((float(t) - trained_seconds, int(w)) for t, w in at if t > trained_seconds)


@dataclasses.dataclass
class _Pull:
  worker: int
  iteration: int
  versions: dict
  sent: float
  round: int = -1


@dataclasses.dataclass
class _Host:
  """The JSON-able part of the state: what checkpoints keep of the run's bookkeeping."""
  iteration: list
  clock: list
  round: int = 0
  records: int = 0
  trained_seconds: float = 0.0   # wall-clock seconds of training before this process's start
  totals: dict = dataclasses.field(default_factory=lambda: {
      "dropped_gradients": 0, "crashes": 0, "bytes_pushed": 0, "bytes_pulled": 0})


class RayParameterServer(base.Strategy):
  """`ps` with config.ps.backend='ray' (see the module docstring)."""

  def __init__(self, config, task: Task, pipeline=None):
    if pipeline is not None:
      raise ConfigError("config.ps.backend='ray' runs without a gradient pipeline")
    self.config, self.task, self.ps = config, task, config.ps
    self._tls = tls.RayTLS.from_config(config.ps)   # checked and switched on by start()
    if config.ps.ray_address not in ("", "auto"):
      _check_reachable(config.ps.ray_address)  # Ray itself retries one for minutes,
      self._tls.check_cluster(config.ps.ray_address)   # and one that speaks other TLS too
    simulated = _simulated_fields(config.ps)
    if simulated:
      print(f"pdist: backend=ray runs on real clocks and ignores the simulated-time fields "
            f"{', '.join('config.ps.' + f for f in simulated)}", file=sys.stderr)
    self.K = config.ps.workers
    self.bsp = config.ps.consistency == "bsp"
    self.tx = optim.build(config)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    self.shards = sharding.partition_leaves(abstract, config.ps.shards)
    self.param_bytes = sharding.tree_bytes(abstract)
    self._flat = Flat(abstract)
    self.server = server_lib.ParameterServer(
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract), self.tx,
        num_shards=config.ps.shards, staleness_lr=config.ps.staleness_lr)
    self.host = _Host(iteration=[0] * self.K, clock=[0] * self.K)
    self._records: list[dict] = []
    self._ray = None
    self._actors: list = []
    self._pending: dict = {}          # ObjectRef -> _Pull
    self._waiting: list[int] = []     # ssp: workers held back by the clock bound
    self._params_ref = None           # the current version in Ray's store
    self._flat_version = None         # the current version as one flat vector
    self._slots: Slots | None = None  # one machine: shared parameter / gradient rows
    self._round_grads: dict = {}      # bsp: worker -> (grads, metrics) of this round
    self._started_at = None
    self._kills: list = []
    self._killed: set = set()         # killed by failures.at, their lost call not seen yet
    self._down: set = set()           # workers whose process is restarting
    self._probes: dict = {}           # ObjectRef of a `ready` call -> worker being restarted
    self._probe_failures: dict = {}   # worker -> probes that failed since it went down
    self._running = False             # the workers have been given their first pulls
    self._step = 0
    self.startup_seconds = float("nan")  # from starting Ray to every worker ready (wall clock)

  # -- state ----------------------------------------------------------------------------------
  def init(self, rng):
    init_key, step_key = base.init_keys(rng)
    params = self.task.init(init_key)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": sharding.init_opt_states(self.tx, params, self.shards),
            "versions": jnp.zeros((len(self.shards),), jnp.int32), "step_key": step_key}

  def examples_per_update(self, config) -> int:
    return config.data.batch_size * ((self.K - self.ps.backup_workers) if self.bsp else 1)

  def host_state(self) -> dict:
    return dataclasses.asdict(self.host)

  def load_host_state(self, d: dict) -> None:
    self.host = _Host(**d)

  def records(self) -> list[dict]:
    out, self._records = self._records, []
    return out

  def records_count(self) -> int:
    return self.host.records

  def _record(self, **fields) -> None:
    self._records.append({"step": self._step, **fields})
    self.host.records += 1

  # -- Ray --------------------------------------------------------------------------------------
  def start(self) -> None:
    """Starts Ray and the K workers, and waits until every one is built and has compiled its
    gradient, so that training starts with all of them (start-up reported apart)."""
    if self._ray is None:
      self._start()

  def _start(self) -> None:
    begun = time.perf_counter()
    # before ray.init, so that the instance it starts inherits the variables; refuses TLS this
    # process's Ray can no longer take (it reads it once per process, at import)
    self._tls.enable()
    ray = start_ray(self.ps.ray_address, self.K, self.ps.ray_worker_cpus,
                    self.ps.ray_worker_gpus)
    self._ray = ray
    actor = ray.remote(num_cpus=self.ps.ray_worker_cpus, num_gpus=self.ps.ray_worker_gpus,
                       max_restarts=-1, max_task_retries=0)(_WorkerProcess)
    if not self.ps.ray_address and self.ps.ray_shared_memory:  # one machine: shared rows
      size = int(self._flat.offsets[-1])
      need = 2 * self.K * size * self._flat.dtype.itemsize
      free = _shm_free_bytes()
      if free < 2 * need:   # the rows are sparse files: too little room would be a SIGBUS later
        print(f"pdist: {need / 2**20:.0f} MB of shared-memory rows do not fit in "
              f"{free / 2**20:.0f} MB free under /dev/shm; messages go through Ray's object "
              "store", file=sys.stderr)
      else:
        self._slots = Slots(self.K, size, self._flat.dtype)
    spec = None if self._slots is None else self._slots.spec()
    self._actors = [actor.remote(self.config, k, spec, self.task.teacher) for k in range(self.K)]
    try:
      ray.get([a.ready.remote() for a in self._actors])
    except ray.exceptions.RayError as e:
      self.close()
      raise TrainingError(f"a Ray worker process could not start: {_last_line(e)}") from None
    self._started_at = time.perf_counter()   # failures.at counts from here
    self._trained_before = self.host.trained_seconds   # (and from a resumed run's past)
    self.startup_seconds = self._started_at - begun
    self._kills = kill_schedule(self.ps.failures.at, self.host.trained_seconds)
    self._record(op="start", workers=self.K)

  def close(self) -> None:
    """Stops the workers and the local Ray instance (also after an error)."""
    if self._ray is not None:
      ray, self._ray = self._ray, None
      for a in self._actors:
        ray.kill(a, no_restart=True)
      self._actors, self._pending, self._probes, self._down = [], {}, {}, set()
      self._running = False
      ray.shutdown()
    self._tls.disable()   # after Ray stopped: the environment back, "auto"'s files removed
    if self._slots is not None:
      self._slots.unlink()
      self._slots = None

  def _current_flat(self, out):
    """Writes the current version into `out`: raveled straight into it the first time, copied
    from that first row after (a worker's row changes only when it is called again, by which
    time a new version has reset `_flat_version`)."""
    if self._flat_version is None:
      self._flat_version = self._flat.ravel(self.server.params, out=out)
    elif self._flat_version is not out:
      out[:] = self._flat_version

  def _current_ref(self):
    if self._params_ref is None:
      self._params_ref = self._ray.put(self._flat.ravel(self.server.params))
    return self._params_ref

  def _submit(self, w: int, iteration: int | None = None, round_: int = -1) -> None:
    """Worker w pulls the current version and starts its next gradient."""
    if iteration is None:
      iteration = self.host.iteration[w]
      self.host.iteration[w] += 1
    if self._slots is not None:
      self._current_flat(out=self._slots.params[w])
      ref = self._actors[w].compute_shared.remote(iteration)
    else:
      ref = self._actors[w].compute.remote(self._current_ref(), iteration)
    self._pending[ref] = _Pull(w, iteration, dict(enumerate(self.server.versions)),
                               time.perf_counter(), round_)
    self.host.totals["bytes_pulled"] += self.param_bytes
    self._record(op="pull", worker=w, iteration=iteration)

  def _kill_due(self) -> float | None:
    """Kills the workers whose scripted time has come; returns seconds to the next kill."""
    if self._started_at is None or not self._kills:
      return None
    now = time.perf_counter() - self._started_at
    while self._kills and self._kills[0][0] <= now:
      _, w = self._kills.pop(0)
      # the process dies and Ray restarts it; a call in flight fails (a lost gradient), a call
      # made later waits for the new process
      self._ray.kill(self._actors[w], no_restart=False)
      self.host.totals["crashes"] += 1
      self._killed.add(w)
      self._record(op="kill", worker=w)
    return self._kills[0][0] - now if self._kills else None

  def _next_result(self):
    """(pull, (flat gradient, metrics, seconds)) of the first finished gradient, or None when what
    finished was something else: a lost gradient (its worker died: counted and recorded; the
    worker is probed until its new process is ready, then rejoins with a fresh pull) or such a
    probe."""
    while True:
      timeout = self._kill_due()
      ready, _ = self._ray.wait(list(self._pending) + list(self._probes), num_returns=1,
                                timeout=timeout)
      if ready:
        break
    ref = ready[0]
    if ref in self._probes:
      w = self._probes.pop(ref)
      try:
        self._ray.get(ref)
      except self._ray.exceptions.RayError as e:
        self._probe_failures[w] = self._probe_failures.get(w, 0) + 1
        if (getattr(e, "actor_init_failed", False) or self._probe_failures[w] > 100
            or not isinstance(e, self._ray.exceptions.RayActorError)):
          raise TrainingError(f"Ray worker {w} died and could not be restarted: "
                              f"{_last_line(e)}") from None
        self._probes[self._actors[w].ready.remote()] = w    # still restarting: ask again
        return None
      self._probe_failures.pop(w, None)
      self._down.discard(w)
      self._rejoin(w)
      return None
    pull = self._pending.pop(ref)
    try:
      return pull, self._ray.get(ref)
    except self._ray.exceptions.RayTaskError as e:   # the gradient call itself raised
      raise TrainingError(f"Ray worker {pull.worker} failed computing its gradient "
                          f"{pull.iteration}: {_last_line(e)}") from None
    except self._ray.exceptions.RayActorError as e:
      w = pull.worker
      if w in self._killed:               # a scripted kill, counted when it was made
        self._killed.discard(w)
      elif w not in self._down:           # the process died of something else
        self.host.totals["crashes"] += 1
      self.host.totals["dropped_gradients"] += 1
      self._record(op="lost", worker=w, iteration=pull.iteration, error=type(e).__name__)
      if w not in self._down:
        self._down.add(w)
        self._probes[self._actors[w].ready.remote()] = w
      return None

  def _rejoin(self, w: int) -> None:
    """Worker w's new process is ready: it pulls the current version (bsp: joins this round
    unless it already delivered or has a call for it; ssp: unless the clock bound holds it)."""
    if self.bsp:
      r = self.host.round
      if w not in self._round_grads and not any(
          p.worker == w and p.round == r for p in self._pending.values()):
        self._submit(w, iteration=r, round_=r)
    elif self._may_start(w):
      self._submit(w)
    else:
      self._waiting.append(w)

  def _begin(self, state) -> None:
    """(Re)starts the workers at this state: every worker pulls it."""
    if self._ray is None:
      self._start()
    self._load(state)
    if not self._running:
      self._running = True
      for w in range(self.K):
        if self.bsp:
          self._submit(w, iteration=self.host.round, round_=self.host.round)
        elif self._may_start(w):   # ssp: a resumed run's clocks may hold some back
          self._submit(w)
        else:
          self._waiting.append(w)

  def _load(self, state) -> None:
    s = self.server
    if s.params is not state["params"]:
      s._params, s.opt_states = state["params"], list(state["opt_state"])
      s.versions = [int(v) for v in np.asarray(state["versions"])]
      self._params_ref = self._flat_version = None
    self._step = int(state["step"])

  # -- the loop ---------------------------------------------------------------------------------
  def run(self, state, num_updates: int):
    self._begin(state)
    sums: dict = collections.defaultdict(float)
    stale: list[int] = []
    count, gap = 0, 0
    target = self._step + num_updates
    while self._step < target:
      got = self._next_result()
      if got is None:
        continue
      pull, result = got
      flat, metrics, seconds = result
      if flat is None:  # shared rows: copied out before the worker can be called again
        flat = np.array(self._slots.grads[pull.worker])
      grads = self._flat.unravel(flat)
      round_trip = time.perf_counter() - pull.sent
      self.host.totals["bytes_pushed"] += self.param_bytes
      if self.bsp:
        applied = self._bsp_arrival(pull, grads, metrics, seconds)
        if applied is None:
          continue
        for k, v in applied.items():
          sums[k] += v
        count += 1
        stale.extend([0] * (self.K - self.ps.backup_workers))
        continue
      staleness = self.server.push(pull.worker, grads, pull.versions)
      tau = max(staleness.values())
      self._params_ref = self._flat_version = None
      self._step += 1
      self.host.clock[pull.worker] += 1
      scale = 1.0 / tau if self.ps.staleness_lr == "inverse" and tau >= 1 else 1.0
      self._record(op="apply", worker=pull.worker, iteration=pull.iteration, staleness=tau,
                   scale=scale, compute_seconds=seconds, round_trip_seconds=round_trip)
      for k, v in metrics.items():
        sums[k] += v
      count += 1
      stale.append(tau)
      if self._may_start(pull.worker):
        self._submit(pull.worker)
      else:
        self._waiting.append(pull.worker)
      self._release_waiting()
      if self.ps.consistency == "ssp":
        gap = max(gap, max(self.host.clock) - min(self.host.clock))
    self.host.trained_seconds = self._trained_before + time.perf_counter() - self._started_at
    state = dict(state, params=self.server.params, opt_state=list(self.server.opt_states),
                 versions=jnp.asarray(self.server.versions, jnp.int32),
                 step=jnp.asarray(self._step, jnp.int32))
    return state, self._row(sums, count, stale, gap)

  def _row(self, sums, count, stale, gap) -> dict:
    out = {k: v / max(count, 1) for k, v in sums.items()}
    out.update(staleness_summary(stale), updates=self._step, **self.host.totals)
    if self.ps.consistency == "ssp":
      out["clock_gap_max"] = gap
    return out

  def _may_start(self, w: int) -> bool:
    if self.ps.consistency != "ssp":
      return True
    return self.host.clock[w] + 1 - min(self.host.clock) <= self.ps.max_staleness

  def _release_waiting(self) -> None:
    for v in list(self._waiting):
      if self._may_start(v) and v not in self._down:
        self._waiting.remove(v)
        self._submit(v)

  def _bsp_arrival(self, pull, grads, metrics, seconds):
    """A bsp gradient arrived: kept if it belongs to this round, else dropped. When the round
    has its workers - backup_workers gradients, their mean is applied (the metrics' mean is
    returned) and every worker pulls the next round (the late ones after their stale one)."""
    r = self.host.round
    if pull.round != r:
      self.host.totals["dropped_gradients"] += 1
      self._record(op="late", worker=pull.worker, iteration=pull.iteration)
      return None
    self._round_grads[pull.worker] = (grads, metrics, seconds)
    if len(self._round_grads) < self.K - self.ps.backup_workers:
      return None
    workers = sorted(self._round_grads)
    mean = server_lib.average([self._round_grads[w][0] for w in workers])
    self.server.push(-1, mean, pull.versions)
    self._params_ref = self._flat_version = None
    self._step += 1
    self._record(op="round", workers=workers, round=r,
                 compute_seconds=[self._round_grads[w][2] for w in workers])
    metrics = {k: float(np.mean([self._round_grads[w][1][k] for w in workers]))
               for k in metrics}
    for w in workers:
      self.host.clock[w] += 1
    self._round_grads = {}
    self.host.round += 1
    for w in range(self.K):  # a worker still on the old round starts once it has finished it
      if w not in self._down:  # (one that is restarting joins when it is ready)
        self._submit(w, iteration=self.host.round, round_=self.host.round)
    return metrics

  def describe(self, state) -> dict:
    return {"ps_backend": "ray", "ray_startup_seconds": self.startup_seconds,
            "ray_tls": self._tls.mode}
