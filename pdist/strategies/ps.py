"""`ps`: the parameter-server strategy — the simulator's schedule replayed in compiled chunks.

Because the timing model never looks at parameter values, the host simulator (pdist/ps/) can
decide the order of pushes and pulls first; the math then runs as one jitted `lax.scan` per log
interval:

- async / ssp (`AsyncOp`s): each scan step optionally applies one worker's pending gradient (from
  its in-flight slot) to the server shards: the worker's local pipeline (its own state), then the
  central pipeline, then the optimizer, scaled by 1/staleness under `staleness_lr=inverse`. Then it
  optionally lets one worker pull: its gradient on the server's current parameters — exactly its
  snapshot — and that gradient's loss go into its slot. One gradient per applied update, like
  plain SGD, and the loss reported is that of the gradients applied. On accelerators the same
  step runs branch-free (no lax.cond; see _async_chunk_branch_free).
- bsp (`BspRound`s): each scan step is one round: one gradient per worker that made the barrier
  (vmapped over their batches, all on the same version), each through that worker's local
  pipeline, averaged, then the central pipeline and one update. With an empty local pipeline the
  average is computed as the gradient of the concatenated batches (the same value, faster).

The state is one pytree (server parameters, per-shard optimizer states and versions, the K
gradient slots, the pipeline state with one local slice per worker, the update count) plus the
simulator's JSON-able state: together everything needed to continue exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdist import optim
from pdist import pipeline as pipeline_lib
from pdist.data import WorkerSampler
from pdist.ps import sharding, timing
from pdist.ps.simulator import Simulator
from pdist.registry import STRATEGIES, ConfigError, check_choice, check_positive
from pdist.strategies import base
from pdist.tasks import Task

CONSISTENCY = ("bsp", "ssp", "async")


def ps_config() -> ml_collections.ConfigDict:
  """config.ps: workers, server shards, consistency model, simulated time and failures.

  Which examples each worker holds is config.data.partition (shared with other strategies).
  """
  c = ml_collections.ConfigDict()
  c.workers = 4
  c.shards = 1              # server shards; parameter leaves are split over them by bytes
  c.consistency = "async"   # bsp / ssp / async
  c.backup_workers = 0      # bsp: apply the first workers - backup_workers arrivals per round
  c.max_staleness = 0       # ssp: clock gap bound s >= 1 (required for ssp)
  c.staleness_lr = "none"   # none / inverse: lr / staleness when staleness >= 1
  timing.add_timing_fields(c)  # compute_time, stragglers (the shard links: config.network)
  c.failures = ml_collections.ConfigDict()
  c.failures.rate = 0.0             # crashes per worker per time unit (Poisson)
  c.failures.at = ()                # ((time, worker), ...) scripted crashes
  c.failures.restart_delay = 1.0
  # where the workers run: "emulator" (one process, simulated time: the default) or "ray" (real
  # worker processes, real clocks; see strategies/ps_ray.py)
  c.backend = "emulator"
  c.ray_address = ""        # ray: an existing cluster ("auto", "HOST:PORT"); "" starts one here
  c.ray_worker_cpus = 1.0   # ray: CPUs each worker reserves
  c.ray_worker_gpus = 0.0   # ray: GPUs (or a share, e.g. 0.25) each worker reserves
  c.ray_shared_memory = True  # ray, one machine: messages through shared memory (else, and on
                              # a cluster, through Ray's object store)
  c.ray_tls = "off"         # ray: "auto" (a CA and certificate of the run's own for 127.0.0.1:
                            # the local instance) / "files" (the three below): Ray's gRPC over
                            # mutual TLS (pdist/tls.py)
  c.ray_tls_cert = ""       # ray_tls='files': PEM certificate every Ray process presents
  c.ray_tls_key = ""        # ray_tls='files': its private key (unencrypted PEM)
  c.ray_tls_ca = ""         # ray_tls='files': PEM certificate of the CA that signed it
  return c


def validate_ps(config) -> None:
  """Names, ranges and the rules between config.ps fields."""
  ps = config.ps
  check_choice(config, "ps.consistency", CONSISTENCY)
  check_choice(config, "ps.staleness_lr", ("none", "inverse"))
  check_positive(config, "ps.workers", "ps.shards")
  check_positive(config, "ps.backup_workers", "ps.max_staleness", "ps.failures.rate",
                 "ps.failures.restart_delay", allow_zero=True)
  timing.validate_timing(config, "ps", ps.workers, "workers")
  if ps.consistency == "ssp" and ps.max_staleness < 1:
    raise ConfigError("config.ps.consistency='ssp' needs config.ps.max_staleness >= 1 "
                      "(the largest clock gap allowed; s = 0 would be bsp)")
  if ps.backup_workers and ps.consistency != "bsp":
    raise ConfigError("config.ps.backup_workers only applies to config.ps.consistency='bsp'")
  if ps.backup_workers >= ps.workers:
    raise ConfigError(f"config.ps.backup_workers={ps.backup_workers} must be below "
                      f"config.ps.workers={ps.workers}")
  check_choice(config, "ps.backend", ("emulator", "ray"))
  if ps.backend == "ray":
    from pdist.strategies.ps_ray import validate_ray  # noqa: PLC0415  (ray only when asked)
    validate_ray(config)
  else:
    defaults = ps_config()
    for field in ("ray_address", "ray_worker_cpus", "ray_worker_gpus", "ray_shared_memory",
                  "ray_tls", "ray_tls_cert", "ray_tls_key", "ray_tls_ca"):
      if ps[field] != defaults[field]:
        raise ConfigError(f"config.ps.{field} only applies to config.ps.backend='ray'")
  for item in ps.failures.at:
    if (not isinstance(item, (tuple, list)) or len(item) != 2 or item[0] < 0
        or not 0 <= int(item[1]) < ps.workers):
      raise ConfigError(f"config.ps.failures.at entries must be (time >= 0, worker in "
                        f"[0, {ps.workers})), got {item!r}")


def _take(tree, i):
  return jax.tree.map(lambda s: s[i], tree)


def _put(tree, i, values):
  return jax.tree.map(lambda s, v: s.at[i].set(v), tree, values)


@STRATEGIES.register("ps", config=ps_config, validate=validate_ps,
                     reads=("network.latency", "network.bandwidth"))
def parameter_server(config, task: Task, pipeline: pipeline_lib.Pipeline | None = None):
  """The `ps` strategy on its backend: the emulator below, or real processes on Ray."""
  if config.ps.backend == "ray":
    from pdist.strategies.ps_ray import RayParameterServer  # noqa: PLC0415
    return RayParameterServer(config, task, pipeline=pipeline)
  return ParameterServerStrategy(config, task, pipeline=pipeline)


class ParameterServerStrategy(base.Strategy):

  def __init__(self, config, task: Task, pipeline: pipeline_lib.Pipeline | None = None,
               branch_free: bool | None = None):
    """`branch_free`: replay async/ssp ops without `lax.cond` (default: on accelerators, where
    each cond copies its predicate to the host and drains the device; see _async_chunk)."""
    self.task = task
    self.ps = config.ps
    self.K = config.ps.workers
    self.bsp = config.ps.consistency == "bsp"
    self.tx = optim.build(config)
    self.seed = config.train.seed
    self.batch_size = config.data.batch_size
    self._grad = base.grad_fn(task, config.optim.accumulate_steps)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    self.pipeline = pipeline if pipeline is not None else pipeline_lib.build(config, abstract)
    self.shards = sharding.partition_leaves(abstract, config.ps.shards)
    self.shard_bytes = sharding.shard_bytes(abstract, self.shards)
    self.simulator = Simulator(config.ps, config.network, self.shard_bytes,
                               seed=config.train.seed,
                               push_bytes=self.pipeline.push_bytes(abstract, self.shards))
    arrays = base.training_arrays(task)
    self.data = None if arrays is None else jax.device_put(arrays)
    self.sampler = None
    if arrays is not None:
      self.sampler = WorkerSampler(config.data, task.dataset, self.K, self.seed, self.batch_size)
    self.branch_free = (jax.default_backend() != "cpu") if branch_free is None else branch_free
    self._chunk = jax.jit(self._bsp_chunk if self.bsp else self._async_chunk, donate_argnums=(0,))

  # -- state ----------------------------------------------------------------------------------------
  def _metric_shapes(self, params):
    """{"loss": scalar, **task metrics} as ShapeDtypeStructs: what a gradient reports."""
    batch = None
    if self.data is not None:
      batch = base.gather_batch(self.data, np.zeros(self.batch_size, np.int32))
    _, (loss, aux) = jax.eval_shape(self._grad, params, batch, jax.random.PRNGKey(0))
    return {"loss": loss, **aux}

  def init(self, rng):
    init_key, step_key = base.init_keys(rng)
    params = self.task.init(init_key)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": sharding.init_opt_states(self.tx, params, self.shards),
             "versions": jnp.zeros((len(self.shards),), jnp.int32), "step_key": step_key,
             "pipeline": pipeline_lib.init_state(self.pipeline, params, copies=self.K)}
    if not self.bsp:  # each worker's in-flight gradient and the loss it was computed with
      state["slots"] = {
          "grads": jax.tree.map(lambda p: jnp.zeros((self.K,) + p.shape, p.dtype), params),
          "metrics": jax.tree.map(lambda m: jnp.zeros((self.K,) + m.shape, m.dtype),
                                  self._metric_shapes(params))}
    return state

  def examples_per_update(self, config) -> int:
    if self.bsp:
      return self.batch_size * (self.K - self.ps.backup_workers)
    return self.batch_size

  def host_state(self) -> dict:
    return self.simulator.state_dict()

  def describe(self, state) -> dict:
    ahead = self.simulator.scripted_crashes_ahead()
    return {base.UNREACHED_FAILURES: ahead} if ahead else {}

  def check_finished(self, state) -> None:
    base.warn_unreached_failures(self.simulator.scripted_crashes_ahead(),
                                 f"at simulated time {self.simulator.time:g}")

  def load_host_state(self, d: dict) -> None:
    self.simulator.load_state_dict(d)

  # -- data -----------------------------------------------------------------------------------------
  def worker_batch(self, worker: int, iteration: int) -> np.ndarray:
    """Indices into the training set of `worker`'s `iteration`-th gradient."""
    return self.sampler.indices(worker, iteration)

  def make_worker(self, worker: int, state):
    """An eager `server.Worker` with this run's data and gradient (for notebooks, tests)."""
    from pdist.ps.server import Worker

    def batch(iteration):
      return None if self.data is None else base.gather_batch(
          self.data, jnp.asarray(self.worker_batch(worker, iteration)))

    return Worker(worker, self._grad, batch, state["step_key"])

  # -- the compiled replay --------------------------------------------------------------------------
  def _worker_rng(self, state, worker, iteration):
    """The rng of `worker`'s `iteration`-th gradient."""
    return jax.random.fold_in(jax.random.fold_in(state["step_key"], worker), iteration)

  def _gradient(self, state, batch, rng):
    """A worker's gradient at the server's current parameters (codistillation's groups add a
    term that reads more of the state)."""
    return self._grad(state["params"], batch, rng)

  def _pipeline_key(self, state):
    return jax.random.fold_in(jax.random.fold_in(state["step_key"], state["step"]),
                              base.PIPELINE_SALT)

  def _apply(self, state, grads, scale):
    """The central pipeline, then each shard's optimizer step; one update."""
    grads, central, stats = self.pipeline.central.update(
        grads, state["pipeline"]["central"], state["params"], self._pipeline_key(state))
    params, opt_state = sharding.apply_sharded(self.tx, state["params"], state["opt_state"],
                                               grads, self.shards, scale)
    state = dict(state, params=params, opt_state=opt_state, step=state["step"] + 1,
                 versions=state["versions"] + 1,
                 pipeline=dict(state["pipeline"], central=central))
    return state, stats

  def _local(self, state, grads, worker, active=True):
    """Worker `worker`'s local pipeline on its gradient, with its own slice of the state; the
    slice is updated only where `active` (the branch-free replay computes every step)."""
    key = jax.random.fold_in(self._pipeline_key(state), worker)
    local = state["pipeline"]["local"]
    old = _take(local, worker)
    grads, new, stats = self.pipeline.local.update(grads, old, None, key)
    if active is not True:
      new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)
    return grads, _put(local, worker, new), stats

  def _async_chunk(self, state, data, ops):
    if self.branch_free:
      return self._async_chunk_branch_free(state, data, ops)

    def body(state, op):
      a = op["apply_worker"]

      def apply(st):
        grads = _take(st["slots"]["grads"], a)
        grads, local, local_stats = self._local(st, grads, a)
        st = dict(st, pipeline=dict(st["pipeline"], local=local))
        st, central_stats = self._apply(st, grads, op["scale"])
        return st, {**_take(st["slots"]["metrics"], a), **local_stats, **central_stats}

      shapes = jax.eval_shape(apply, state)[1]
      state, metrics = jax.lax.cond(
          a >= 0, apply,
          lambda st: (st, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)), state)

      def pull(st):
        w = op["pull_worker"]
        batch = base.gather_batch(data, op.get("idx"))
        grads, (loss, aux) = self._gradient(st, batch,
                                            self._worker_rng(st, w, op["pull_iteration"]))
        slots = {"grads": _put(st["slots"]["grads"], w, grads),
                 "metrics": _put(st["slots"]["metrics"], w, {"loss": loss, **aux})}
        return dict(st, slots=slots)

      state = jax.lax.cond(op["pull_worker"] >= 0, pull, lambda st: st, state)
      return state, (metrics, a >= 0)

    state, (per_step, applied) = jax.lax.scan(body, state, ops)
    weight = applied.astype(jnp.float32)
    return state, ({k: (v * weight).sum() for k, v in per_step.items()}, weight.sum())

  def _async_chunk_branch_free(self, state, data, ops):
    """The same replay with no data-dependent control flow: every step computes the apply (for
    worker max(a, 0)) and the pull (for worker max(p, 0)) and keeps each result only where the op
    has it, selecting at the size of one update (parameters, optimizer state, one slot, one local
    pipeline slice) — never over all K slots. A no-op step still costs a gradient, which is why
    intervals are cut so that padding is short. Equal to the cond replay to float rounding
    (tested; XLA fuses the two programs differently).

    The gradient a step applies is read from the slots at the end of the step before (and before
    the scan for the first), never in the step that writes a slot: a read of the [K, ...] slot
    array in the same step as its update made XLA copy the whole array twice per step whenever
    some result of that read was not an input of the update (the optimizer's momentum is not):
    at K = 256 that is 2 x 650 MB a step, 8 updates/s against 366 at K = 4 on this CPU."""
    def keep(pred, new, old):
      return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)

    applies = ops["apply_worker"]
    ops = dict(ops, next_apply=jnp.concatenate([applies[1:], jnp.full((1,), -1, applies.dtype)]))

    def body(carry, op):
      state, slot = carry
      a, p = op["apply_worker"], op["pull_worker"]
      do_apply, do_pull = a >= 0, p >= 0
      wa, wp = jnp.maximum(a, 0), jnp.maximum(p, 0)
      # apply: worker wa's local pipeline on its slot, then the central pipeline and optimizer
      grads, local, local_stats = self._local(state, slot, wa, active=do_apply)
      applied, central_stats = self._apply(dict(state, pipeline=dict(state["pipeline"],
                                                                     local=local)), grads,
                                           op["scale"])
      fields = ("params", "opt_state", "versions", "step")
      state = dict(state, **keep(do_apply, {k: applied[k] for k in fields},
                                 {k: state[k] for k in fields}),
                   pipeline=dict(state["pipeline"], local=local,
                                 central=keep(do_apply, applied["pipeline"]["central"],
                                              state["pipeline"]["central"])))
      metrics = {**_take(state["slots"]["metrics"], wa), **local_stats, **central_stats}
      # pull: worker wp's next gradient at the (possibly just updated) parameters
      batch = base.gather_batch(data, op.get("idx"))
      grads, (loss, aux) = self._gradient(state, batch,
                                          self._worker_rng(state, wp, op["pull_iteration"]))
      slots = state["slots"]
      new_grads = keep(do_pull, grads, _take(slots["grads"], wp))
      new_metrics = keep(do_pull, {"loss": loss, **aux}, _take(slots["metrics"], wp))
      state = dict(state, slots={"grads": _put(slots["grads"], wp, new_grads),
                                 "metrics": _put(slots["metrics"], wp, new_metrics)})
      # the next step's gradient, read after this step's write (it may be the one just pulled)
      slot = _take(state["slots"]["grads"], jnp.maximum(op["next_apply"], 0))
      return (state, slot), (metrics, do_apply)

    first = _take(state["slots"]["grads"], jnp.maximum(applies[0], 0))
    (state, _), (per_step, applied) = jax.lax.scan(body, (state, first), ops)
    weight = applied.astype(jnp.float32)
    return state, ({k: jnp.where(applied, v, 0.0).sum() for k, v in per_step.items()},
                   weight.sum())

  def _bsp_chunk(self, state, data, rounds):
    def body(state, rnd):
      if self.pipeline.local_is_identity:
        grads, metrics = self._bsp_concatenated(state, data, rnd)
      else:
        grads, metrics, state = self._bsp_per_worker(state, data, rnd)
      state, central_stats = self._apply(state, grads, 1.0)
      return state, {**metrics, **central_stats}

    state, per_step = jax.lax.scan(body, state, rounds)
    return state, base.mean_metrics(per_step)

  def _bsp_per_worker(self, state, data, rnd):
    """One gradient per worker of the round (vmapped), each through its worker's local pipeline,
    then averaged; returns (grads, metrics averaged over the workers, state)."""
    workers = rnd["workers"]
    rngs = jax.vmap(lambda w: self._worker_rng(state, w, rnd["round"]))(workers)
    batches = None if data is None else jax.vmap(lambda i: base.gather_batch(data, i))(rnd["idx"])
    grads, (loss, aux) = jax.vmap(self._grad, in_axes=(None, 0, 0))(state["params"], batches, rngs)
    key = self._pipeline_key(state)
    keys = jax.vmap(lambda w: jax.random.fold_in(key, w))(workers)
    local = state["pipeline"]["local"]
    grads, new_local, stats = jax.vmap(self.pipeline.local.update, in_axes=(0, 0, None, 0))(
        grads, _take(local, workers), None, keys)
    state = dict(state, pipeline=dict(state["pipeline"], local=_put(local, workers, new_local)))
    mean = lambda tree: jax.tree.map(lambda v: v.mean(axis=0), tree)  # noqa: E731
    return mean(grads), mean({"loss": loss, **aux, **stats}), state

  def _bsp_concatenated(self, state, data, rnd):
    """With nothing to run per worker, the mean of the workers' gradients (equal batches) is the
    gradient of their concatenated batches: one larger batch, which is faster than W small ones
    (the ps benchmark's bsp K=4: ~3x on this CPU). Equal to `_bsp_per_worker` up to rounding for
    every task whose loss ignores its rng (all of today's; the first worker's rng is used)."""
    idx = rnd.get("idx")
    batch = None if data is None else base.gather_batch(data, idx.reshape(-1))
    rng = self._worker_rng(state, rnd["workers"][0], rnd["round"])
    grads, (loss, aux) = self._grad(state["params"], batch, rng)
    return grads, {"loss": loss, **aux}

  # -- host side ------------------------------------------------------------------------------------
  def _encode_rounds(self, rounds) -> dict:
    """BspRounds as arrays: one step per round, the same number of workers in each."""
    out = {"round": np.asarray([r.round for r in rounds], np.int32),
           "workers": np.asarray([r.workers for r in rounds], np.int32)}
    if self.data is not None:
      out["idx"] = np.stack([np.stack([self.worker_batch(w, r.round) for w in r.workers])
                             for r in rounds])
    return out

  def _encode_ops(self, ops, length: int) -> dict:
    """AsyncOps as arrays, padded to `length` with no-op steps; the batches of all pulls at once
    (WorkerSampler.indices_many)."""
    n = len(ops)
    fields = np.asarray([(op.apply_worker, op.pull_worker, op.pull_iteration) for op in ops],
                        np.int64).reshape(n, 3)
    enc = {"apply_worker": np.full(length, -1, np.int32), "scale": np.ones(length, np.float32),
           "pull_worker": np.full(length, -1, np.int32),
           "pull_iteration": np.zeros(length, np.int32)}
    enc["apply_worker"][:n], enc["pull_worker"][:n] = fields[:, 0], fields[:, 1]
    enc["pull_iteration"][:n] = fields[:, 2]
    enc["scale"][:n] = [op.scale for op in ops]
    if self.data is not None:
      idx = np.zeros((length, self.batch_size), np.int32)
      pulls = np.nonzero(fields[:, 1] >= 0)[0]
      if pulls.size:
        idx[pulls] = self.sampler.indices_many(fields[pulls, 1], fields[pulls, 2])
      enc["idx"] = idx
    return enc

  def dispatch(self, state, num_updates: int, step: int | None = None):
    """Simulates the next `num_updates` updates and queues their replay without waiting for the
    device: the host simulates and encodes interval i + 1 while the device replays interval i
    (train.run reads a chunk's metrics one chunk later)."""
    del step
    interval = self.simulator.advance(num_updates)
    ops = interval.ops
    host = interval.metrics(dict(self.simulator.totals))
    host["updates"] = self.simulator.updates
    if self.ps.consistency == "ssp":
      host["clock_gap_max"] = interval.max_clock_gap
    if self.bsp:
      state, metrics = self._chunk(state, self.data, self._encode_rounds(ops))
      return state, ([(metrics, None)], host)
    # fixed-length pieces (a power of two >= num_updates), so one compilation serves every
    # interval, including the first one with its K initial pulls
    length = 1 << max(0, (num_updates - 1).bit_length())
    parts = []
    for lo in range(0, len(ops), length):
      state, part = self._chunk(state, self.data, self._encode_ops(ops[lo:lo + length], length))
      parts.append(part)
    return state, (parts, host)

  def collect(self, pending) -> dict:
    parts, host = pending
    parts = jax.device_get(parts)
    if self.bsp:
      out = {k: float(v) for k, v in parts[0][0].items()}
    else:
      count = sum(float(n) for _, n in parts)
      out = {k: sum(float(p[k]) for p, _ in parts) / max(count, 1.0) for k in parts[0][0]}
    out.update(host)
    return out

  def run(self, state, num_updates: int):
    state, pending = self.dispatch(state, num_updates)
    return state, self.collect(pending)
