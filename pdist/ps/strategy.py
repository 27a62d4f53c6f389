"""`ps`: the parameter-server strategy — the simulator's schedule replayed in compiled chunks.

Because the timing model never looks at parameter values, the host simulator (simulator.py) can
decide the order of pushes and pulls first; the math then runs as one jitted `lax.scan` per log
interval:

- async / ssp: each scan step optionally applies one worker's pending gradient (from its
  in-flight slot, scaled by 1/staleness under `staleness_lr=inverse`) to the server shards, then
  optionally lets one worker pull: its gradient on the server's current parameters — exactly its
  snapshot — goes into its slot. One gradient per applied update, like plain SGD.
- bsp: each scan step is one round: the gradient of the concatenated batches of the K - b workers
  that made the barrier (all computed on the same version), averaged, applied.

The state is one pytree (server parameters, per-shard optimizer states and versions, the K
gradient slots, the update count) plus the simulator's JSON-able state: together everything needed
to continue exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pdist import data as data_lib
from pdist import optim
from pdist.ps import sharding
from pdist.ps.simulator import Simulator
from pdist.strategies import base
from pdist.tasks import Task


class ParameterServerStrategy(base.Strategy):
  name = "ps"

  def __init__(self, config, task: Task):
    self.config = config
    self.task = task
    self.ps = config.ps
    self.K = config.ps.workers
    self.tx = optim.build(config)
    self.seed = config.train.seed
    self.batch_size = config.data.batch_size
    self._grad = base.grad_fn(task, config.optim.accumulate_steps)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    self.shards = sharding.partition_leaves(abstract, config.ps.shards)
    self.shard_bytes = sharding.shard_bytes(abstract, self.shards)
    self.simulator = Simulator(config.ps, self.shard_bytes, seed=config.train.seed)
    self.data = None
    self.parts = None
    if task.has_data:
      ds = task.dataset
      self.data = jax.device_put({"x": ds.x_train, "y": ds.y_train})
      self.parts = worker_partitions(config, ds)
      small = min(len(p) for p in self.parts) if self.ps.partition != "shared" else ds.num_train
      need = self.batch_size * (self.K if self.ps.partition == "shared" else 1)
      if need > small:
        from pdist.config import ConfigError
        raise ConfigError(
            f"config.data.batch_size={self.batch_size} per worker does not fit: a worker's data "
            f"has {small} examples (partition '{self.ps.partition}', {self.K} workers)")
    self._global_batches: dict[int, np.ndarray] = {}
    if self.ps.consistency == "bsp":
      self._chunk = jax.jit(self._bsp_chunk, donate_argnums=(0,))
    else:
      self._chunk = jax.jit(self._async_chunk, donate_argnums=(0,))

  # -- state ----------------------------------------------------------------------------------------
  def init(self, rng):
    init_key, step_key = base.init_keys(rng)
    params = self.task.init(init_key)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": sharding.init_opt_states(self.tx, params, self.shards),
             "versions": jnp.zeros((len(self.shards),), jnp.int32), "step_key": step_key}
    if self.ps.consistency != "bsp":
      state["slots"] = jax.tree.map(lambda p: jnp.zeros((self.K,) + p.shape, p.dtype), params)
    return state

  def examples_per_update(self, config) -> int:
    if self.ps.consistency == "bsp":
      return self.batch_size * (self.K - self.ps.backup_workers)
    return self.batch_size

  def host_state(self) -> dict:
    return self.simulator.state_dict()

  def load_host_state(self, d: dict) -> None:
    self.simulator.load_state_dict(d)

  # -- data -----------------------------------------------------------------------------------------
  def worker_batch(self, worker: int, iteration: int) -> np.ndarray:
    """Indices into the training set of `worker`'s `iteration`-th gradient."""
    b = self.batch_size
    if self.ps.partition == "shared":
      if iteration not in self._global_batches:
        if len(self._global_batches) > 4 * self.K:
          self._global_batches.clear()
        self._global_batches[iteration] = data_lib.batch_indices(
            self.seed, iteration, b * self.K, self.task.dataset.num_train)[0]
      return self._global_batches[iteration][worker * b:(worker + 1) * b]
    part = self.parts[worker]
    return part[data_lib.batch_indices(self.seed, iteration, b, len(part), worker=worker)[0]]

  def make_worker(self, worker: int, state):
    """An eager `server.Worker` with this run's data and gradient (for notebooks, tests)."""
    from pdist.ps.server import Worker

    def batch(iteration):
      return None if self.data is None else base.gather_batch(
          self.data, jnp.asarray(self.worker_batch(worker, iteration)))

    return Worker(worker, self._grad, batch, state["step_key"])

  # -- the compiled replay --------------------------------------------------------------------------
  def _apply(self, state, grads, scale):
    params, opt_state = sharding.apply_sharded(self.tx, state["params"], state["opt_state"],
                                               grads, self.shards, scale)
    return dict(state, params=params, opt_state=opt_state, step=state["step"] + 1,
                versions=state["versions"] + 1)

  def _async_chunk(self, state, data, ops):
    abstract = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
    sample = None if data is None else base.gather_batch(data, ops["idx"][0])
    metric_shapes = jax.eval_shape(lambda p, b: self._grad(p, b, jax.random.PRNGKey(0))[1],
                                   abstract(state["params"]), abstract(sample))
    metric_shapes = {"loss": metric_shapes[0], **metric_shapes[1]}

    def body(state, op):
      def apply(st):
        g = jax.tree.map(lambda s: s[op["apply_worker"]], st["slots"])
        return self._apply(st, g, op["scale"])

      state = jax.lax.cond(op["apply_worker"] >= 0, apply, lambda st: st, state)

      def pull(st):
        w = op["pull_worker"]
        rng = jax.random.fold_in(jax.random.fold_in(st["step_key"], w), op["pull_iteration"])
        batch = base.gather_batch(data, op.get("idx"))
        grads, (loss, aux) = self._grad(st["params"], batch, rng)
        slots = jax.tree.map(lambda s, g: s.at[w].set(g), st["slots"], grads)
        return dict(st, slots=slots), {"loss": loss, **aux}

      def no_pull(st):
        return st, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)

      state, m = jax.lax.cond(op["pull_worker"] >= 0, pull, no_pull, state)
      return state, (m, op["pull_worker"] >= 0)

    state, (per_step, pulled) = jax.lax.scan(body, state, ops)
    weight = pulled.astype(jnp.float32)
    sums = {k: (v * weight).sum() for k, v in per_step.items()}
    return state, (sums, weight.sum())

  def _bsp_chunk(self, state, data, rounds):
    def body(state, rnd):
      rng = jax.random.fold_in(state["step_key"], rnd["round"])
      batch = base.gather_batch(data, rnd.get("idx"))
      grads, (loss, aux) = self._grad(state["params"], batch, rng)
      return self._apply(state, grads, 1.0), {"loss": loss, **aux}

    state, per_step = jax.lax.scan(body, state, rounds)
    return state, base.mean_metrics(per_step)

  # -- host side ------------------------------------------------------------------------------------
  def _encode(self, ops, length: int) -> dict:
    """The ops as arrays (async/ssp: padded to `length` with no-op steps)."""
    if self.ps.consistency == "bsp":  # one op per update: exact length, nothing to pad
      out = {"round": np.asarray([op.bsp_round for op in ops], np.int32)}
      if self.data is not None:
        out["idx"] = np.stack([np.concatenate([self.worker_batch(w, op.bsp_round)
                                               for w in op.bsp_workers]) for op in ops])
      return out
    enc = {"apply_worker": np.full(length, -1, np.int32), "scale": np.ones(length, np.float32),
           "pull_worker": np.full(length, -1, np.int32),
           "pull_iteration": np.zeros(length, np.int32)}
    for i, op in enumerate(ops):
      enc["apply_worker"][i], enc["scale"][i] = op.apply_worker, op.scale
      enc["pull_worker"][i], enc["pull_iteration"][i] = op.pull_worker, op.pull_iteration
    if self.data is not None:
      idx = np.zeros((length, self.batch_size), np.int32)
      for i, op in enumerate(ops):
        if op.pull_worker >= 0:
          idx[i] = self.worker_batch(op.pull_worker, op.pull_iteration)
      enc["idx"] = idx
    return enc

  def run(self, state, num_updates: int):
    interval = self.simulator.advance(num_updates)
    ops = interval.ops
    if self.ps.consistency == "bsp":
      state, metrics = self._chunk(state, self.data, self._encode(ops, len(ops)))
      out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    else:
      # fixed-length pieces (a power of two >= num_updates), so one compilation serves every
      # interval, including the first one with its K initial pulls
      length = 1 << max(0, (num_updates - 1).bit_length())
      sums: dict[str, float] = {}
      count = 0.0
      for lo in range(0, len(ops), length):
        state, (part, n) = self._chunk(state, self.data, self._encode(ops[lo:lo + length], length))
        part, n = jax.device_get((part, n))
        count += float(n)
        for k, v in part.items():
          sums[k] = sums.get(k, 0.0) + float(v)
      out = {k: v / max(count, 1.0) for k, v in sums.items()}
    out.update(interval.metrics(dict(self.simulator.totals)))
    out["updates"] = self.simulator.updates
    if self.ps.consistency == "ssp":
      out["clock_gap_max"] = interval.max_clock_gap
    return state, out


def worker_partitions(config, dataset) -> list[np.ndarray]:
  """Each worker's indices into the training set (config.ps.partition)."""
  K, seed, n = config.ps.workers, config.train.seed, dataset.num_train
  name = config.ps.partition
  if name in ("iid", "shared"):
    return data_lib.iid(n, K, seed)
  if name == "label":
    return data_lib.label_shards(dataset.y_train, K, seed)
  return data_lib.dirichlet(dataset.y_train, K, config.ps.dirichlet_alpha, seed)
