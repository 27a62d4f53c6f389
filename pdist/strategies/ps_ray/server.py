"""The server loop of `ps` on Ray: submit pulls to the worker actors, take gradients as they
finish (async, ssp, bsp with backup workers), apply them, survive worker deaths, and hand every
pull, update and loss to train.run as records (see the package docstring)."""

from __future__ import annotations

import collections
import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pdist import optim
from pdist import tls
from pdist.data import WorkerSampler
from pdist.errors import TrainingError
from pdist.ps import server as server_lib
from pdist.ps import sharding
from pdist.ps.simulator import staleness_summary
from pdist.registry import ConfigError
from pdist.strategies import base
from pdist.strategies.ps_ray.cluster import check_reachable, kill_schedule, last_line, start_ray
from pdist.strategies.ps_ray.transport import Flat, Slots, shm_free_bytes
from pdist.strategies.ps_ray.workers import WorkerProcess
from pdist.tasks import Task


def _simulated_fields(config) -> list[str]:
  """The simulated-time fields (dotted) set away from their defaults: config.ps's timing model
  and config.network's links, which real clocks replace."""
  import ml_collections  # noqa: PLC0415

  from pdist import network  # noqa: PLC0415
  from pdist.ps import timing  # noqa: PLC0415
  ps = config.ps
  out = []
  for group, defaults in (("ps", timing.add_timing_fields(ml_collections.ConfigDict())),
                          ("network", network.network_config())):
    for key, value in defaults.to_dict().items():
      mine = config[group][key].to_dict() if isinstance(value, dict) else config[group][key]
      if mine != value:
        out.append(f"{group}.{key}")
  if ps.failures.restart_delay != 1.0:  # Ray restarts a process as soon as it can
    out.append("ps.failures.restart_delay")
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


def check_partition(config, task: Task) -> None:
  """Raises the ConfigError that each worker's process would raise when it builds its sampler
  (workers.workers_of): e.g. a batch larger than a worker's part of the data. Checked here, in
  the driver, because a worker's failure would come only after Ray and the actors started (a
  minute and more); it needs the dataset, which config validation does not load."""
  if task.has_data:
    WorkerSampler(config.data, task.dataset, config.ps.workers, config.train.seed,
                  config.data.batch_size)


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
    check_partition(config, task)   # what every worker process would refuse, before Ray starts
    self._tls = tls.RayTLS.from_config(config.ps)   # checked and switched on by start()
    if config.ps.ray_address not in ("", "auto"):
      check_reachable(config.ps.ray_address)  # Ray itself retries one for minutes,
      self._tls.check_cluster(config.ps.ray_address)   # and one that speaks other TLS too
    simulated = _simulated_fields(config)
    if simulated:
      print(f"pdist: backend=ray runs on real clocks and ignores the simulated-time fields "
            f"{', '.join('config.' + f for f in simulated)}", file=sys.stderr)
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
                       max_restarts=-1, max_task_retries=0)(WorkerProcess)
    if not self.ps.ray_address and self.ps.ray_shared_memory:  # one machine: shared rows
      size = int(self._flat.offsets[-1])
      need = 2 * self.K * size * self._flat.dtype.itemsize
      free = shm_free_bytes()
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
      raise TrainingError(f"a Ray worker process could not start: {last_line(e)}") from None
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
                              f"{last_line(e)}") from None
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
                          f"{pull.iteration}: {last_line(e)}") from None
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

  def _unreached_kills(self) -> list[list]:
    """[seconds, worker] of config.ps.failures.at's kills not made (the run ended first)."""
    if self._started_at is None:
      return [[t + self.host.trained_seconds, w]
              for t, w in kill_schedule(self.ps.failures.at, self.host.trained_seconds)]
    return [[t + self._trained_before, w] for t, w in self._kills]

  def check_finished(self, state) -> None:
    base.warn_unreached_failures(self._unreached_kills(), f"after "
                                 f"{self.host.trained_seconds:.2f} s of training")

  def describe(self, state) -> dict:
    unreached = self._unreached_kills()
    return {"ps_backend": "ray", "ray_startup_seconds": self.startup_seconds,
            "ray_tls": self._tls.mode, **({base.UNREACHED_FAILURES: unreached} if unreached
                                          else {})}
