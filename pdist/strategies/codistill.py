"""`codistill`: online codistillation (Anil et al. 2018, "Large scale distributed neural network
training through online distillation").

    --config.strategy=codistill --config.codistill.replicas=2 --config.codistill.exchange_every=50

G replicas of the model train at once, each on its own stream of batches (replica g draws them
as the run with seed + g would) from its own initialisation. Each replica's loss adds a
distillation term toward the other replicas' predictions on its batch, made with *stale* copies
of their parameters, refreshed every `exchange_every` updates:

    loss_g = (1 - weight) CE(labels, z_g) + weight T^2 KL(mean_{h != g} softmax(z_h' / T) || softmax(z_g / T))

with z_h' the logits of replica h's copy from the last exchange (the term starts after `burn_in`
updates). Replicas communicate only those parameter copies — each receives the G - 1 others',
G (G - 1) x model bytes in all every `exchange_every` updates (`bytes_exchanged`, a running
total) — instead of gradients every update, as data-parallel training over G groups would
(`bytes_exchanged_data_parallel`: a ring all-reduce, 2 (G - 1) x model bytes per update). Each
replica stands for a group of devices or workers training it data-parallel (which `sync` shows
equals one device with the group's batch); here the G replicas run as one vmapped program, and
the exchange is emulated with its bytes counted. Rows carry the mean over replicas of every
metric and `eval_accuracy_replicas` etc. per replica; the parameters kept (params.npz) are
replica 0's.

With one replica there is no one to learn from: plain training, exactly. With weight 0 the
replicas are G independent runs (seeds seed .. seed + G - 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdist import distill, optim
from pdist import pipeline as pipeline_lib
from pdist.network import Network
from pdist.ps import sharding
from pdist.ps.simulator import staleness_summary
from pdist.registry import STRATEGIES, ConfigError, check_choice, check_positive
from pdist.strategies import base
from pdist.strategies.ps import ParameterServerStrategy
from pdist.strategies.seeds import seed_batches
from pdist.tasks import Task


def codistill_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.replicas = 2            # G
  c.exchange_every = 50     # updates between parameter exchanges
  c.weight = 0.5            # share of the distillation term
  c.temperature = 1.0       # T
  c.burn_in = 0             # updates of plain training before the distillation term starts
  # simulated time: each update takes compute_time; messages are priced by config.network
  # (latency + bytes / bandwidth, pdist/network.py)
  c.compute_time = 1.0
  # what trains each replica: "single" (one update per step; a data-parallel group, which sync
  # shows is the same math) or "ps" (an emulated parameter server with config.ps's workers,
  # consistency, timing and failures; async or ssp)
  c.group = "single"
  return c


def validate_codistill(config) -> None:
  check_positive(config, "codistill.replicas", "codistill.exchange_every",
                 "codistill.temperature")
  check_positive(config, "codistill.compute_time")
  check_positive(config, "codistill.burn_in", allow_zero=True)
  c = config.codistill
  if not 0 <= c.weight <= 1:
    raise ConfigError(f"config.codistill.weight must be in [0, 1], got {c.weight}")
  if c.burn_in and c.burn_in >= config.train.steps:   # update t distils from t = burn_in on
    raise ConfigError(f"config.codistill.burn_in={c.burn_in} must be below config.train.steps="
                      f"{config.train.steps}, or the distillation term never starts")
  if config.distill.teacher:
    raise ConfigError("config.strategy='codistill' learns from its own replicas; leave "
                      "config.distill.teacher empty")
  if config.privacy.mechanism != "none" or config.compression.name != "none":
    raise ConfigError("config.strategy='codistill' does not combine with config.privacy or "
                      "config.compression")
  if config.data.name == "quadratic":
    raise ConfigError("config.strategy='codistill' distils predictions; the quadratic has none")
  check_choice(config, "codistill.group", ("single", "ps"))
  if c.group == "ps":
    from pdist.strategies import ps  # noqa: PLC0415
    ps.validate_ps(config)
    if config.ps.consistency == "bsp" or config.ps.backend != "emulator":
      raise ConfigError("config.codistill.group='ps' runs emulated async or ssp parameter "
                        "servers; set config.ps.consistency to 'async' or 'ssp' and "
                        "config.ps.backend='emulator'")
    if c.compute_time != 1.0:
      raise ConfigError("with config.codistill.group='ps' time is config.ps's compute_time and "
                        "config.network's latency and bandwidth (the servers' pushes and pulls); "
                        "leave config.codistill.compute_time at its default 1.0")


@STRATEGIES.register("codistill", config=codistill_config, validate=validate_codistill,
                     reads=("network.latency", "network.bandwidth"),
                     uses=lambda c: ("ps",) if c.codistill.group == "ps" else ())
def codistill(config, task: Task, pipeline: pipeline_lib.Pipeline | None = None):
  """Codistillation between replicas trained one update at a time, or by parameter servers."""
  if config.codistill.group == "ps":
    return CodistillServers(config, task, pipeline=pipeline)
  return Codistill(config, task, pipeline=pipeline)


class Codistill(base.Strategy):

  def __init__(self, config, task: Task, pipeline: pipeline_lib.Pipeline | None = None):
    if pipeline is not None:
      raise ConfigError("config.strategy='codistill' takes no gradient pipeline")
    if task.dataset.kind not in ("classification", "language"):
      raise ConfigError("config.strategy='codistill' needs a classification or language task")
    c = config.codistill
    self.task, self.G, self.E = task, int(c.replicas), int(c.exchange_every)
    self.weight, self.T, self.burn_in = float(c.weight), float(c.temperature), int(c.burn_in)
    self.compute, self.network = float(c.compute_time), Network(config.network)
    self.tx = optim.build(config)
    self.first_seed, self.batch_size = int(config.train.seed), config.data.batch_size
    self.data = jax.device_put(base.training_arrays(task))
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    self.model_bytes = sharding.tree_bytes(abstract)
    from pdist import tasks
    self.scores = (tasks.language_scores if task.dataset.kind == "language"
                   else tasks.classification_scores)
    self._chunk = jax.jit(self._run_chunk, static_argnums=(3,), donate_argnums=(0,))

  # -- state ----------------------------------------------------------------------------------------
  def init(self, rng):
    del rng  # replica g starts as the run with seed + g would
    states = []
    for g in range(self.G):
      init_key, step_key = base.init_keys(jax.random.PRNGKey(self.first_seed + g))
      params = self.task.init(init_key)
      states.append({"params": params, "opt_state": self.tx.init(params), "step_key": step_key})
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    stacked["stale"] = jax.tree.map(jnp.copy, stacked["params"])   # its own buffers (donated)
    stacked["step"] = jnp.zeros((), jnp.int32)
    return jax.device_put(stacked)

  def params(self, state):
    return jax.tree.map(lambda p: p[0], state["params"])

  # -- one update of every replica -------------------------------------------------------------------
  def _loss(self, params, stale, g, batch, weight):
    logits = self.task.apply(params, batch["x"])
    hard, metrics = self.scores(logits, batch["y"])
    per_example = hard
    if self.G > 1:
      others = jax.vmap(self.task.apply, in_axes=(0, None))(stale, batch["x"])   # [G, B, ...]
      probs = jax.nn.softmax(others / self.T, axis=-1)
      keep = (jnp.arange(self.G) != g).astype(probs.dtype)
      keep = keep.reshape((self.G,) + (1,) * (probs.ndim - 1))
      target = (probs * keep).sum(0) / (self.G - 1)        # the others' mean prediction
      # as "teacher logits" T log(target), distill.soft_loss is T^2 KL(target || student)
      soft = distill.soft_loss(logits, self.T * jnp.log(jnp.maximum(target, 1e-30)), self.T)
      if soft.ndim > 1:
        soft = soft.mean(axis=tuple(range(1, soft.ndim)))
      per_example = (1 - weight) * hard + weight * soft
      metrics = {**metrics, "hard_loss": hard, "codistill_loss": soft}
    return per_example.mean(), {"loss": per_example.mean(),
                                **{k: v.mean() for k, v in metrics.items()}}

  def _update(self, state, idx):
    # the others' predictions count only after burn_in updates (their early ones are near chance)
    weight = jnp.where(state["step"] >= self.burn_in, self.weight, 0.0)

    def one(params, opt_state, g, rows):
      batch = base.gather_batch(self.data, rows)
      grads, metrics = jax.grad(self._loss, has_aux=True)(params, state["stale"], g, batch,
                                                          weight)
      params, opt_state = optim.apply_gradient(self.tx, params, opt_state, grads)
      return params, opt_state, metrics

    params, opt_state, metrics = jax.vmap(one)(state["params"], state["opt_state"],
                                               jnp.arange(self.G), idx)
    step = state["step"] + 1
    exchange = step % self.E == 0
    stale = jax.tree.map(lambda new, old: jnp.where(exchange, new, old), params, state["stale"])
    return dict(state, params=params, opt_state=opt_state, stale=stale, step=step), metrics

  def _run_chunk(self, state, data, idx, num_updates: int):
    del data
    state, per_step = jax.lax.scan(self._update, state, idx, length=num_updates)
    return state, jax.tree.map(lambda v: v.mean(axis=0), per_step)   # [G] per metric

  def indices(self, step: int, num_updates: int) -> np.ndarray:
    """[n, G, B]: replica g's batches are those of the run with seed + g."""
    per = seed_batches(range(self.first_seed, self.first_seed + self.G), step, self.batch_size,
                       self.task.dataset.num_train, num_updates)
    return per.transpose(1, 0, 2)

  # -- the loop's side -------------------------------------------------------------------------------
  def dispatch(self, state, num_updates: int, step: int | None = None):
    step = self.step(state) if step is None else step
    state, metrics = self._chunk(state, None, self.indices(step, num_updates), num_updates)
    return state, (metrics, step + num_updates)

  def run(self, state, num_updates: int):
    state, pending = self.dispatch(state, num_updates)
    return state, self.collect(pending)

  def collect(self, pending):
    metrics, step = pending
    out = {}
    for key, values in jax.device_get(metrics).items():
      values = np.asarray(values, np.float64)
      out[key] = float(values.mean())
      if self.G > 1:
        out[f"{key}_replicas"] = [float(v) for v in values]
    out["exchanges"] = step // self.E
    # each exchange: every replica receives the G - 1 others' parameters
    out["bytes_exchanged"] = (step // self.E) * self.G * (self.G - 1) * self.model_bytes
    # data parallel over G groups: a ring all-reduce of the gradient moves 2 (G - 1) x model
    # bytes in all per update
    out["bytes_exchanged_data_parallel"] = step * 2 * (self.G - 1) * self.model_bytes
    out["sim_time"], out["sim_time_data_parallel"] = self.sim_times(step)
    return out

  def sim_times(self, step: int) -> tuple[float, float]:
    """Simulated time after `step` updates: codistillation (replicas compute side by side; an
    exchange sends each replica the others' parameters over its link, G - 1 models) against data
    parallel over the G groups (a ring all-reduce after every update: 2 (G - 1) / G models per
    link, 2 (G - 1) messages: Network.all_reduce's price, summed in this order so that
    sim_time stays what it was before config.network)."""
    def transfer(models: float, messages: int) -> float:
      return messages * self.network.latency + self.network.wire(models * self.model_bytes)
    exchanges = step // self.E
    codistill = step * self.compute + exchanges * transfer(self.G - 1, 1 if self.G > 1 else 0)
    ring = transfer(2 * (self.G - 1) / self.G, 2 * (self.G - 1)) if self.G > 1 else 0.0
    return codistill, step * (self.compute + ring)

  def evaluate(self, state) -> dict:
    per = [self.task.evaluate(jax.tree.map(lambda p: p[g], state["params"]))
           for g in range(self.G)]
    out = {k: float(np.mean([m[k] for m in per])) for k in per[0]}
    if self.G > 1:
      out.update({f"{k}_replicas": [m[k] for m in per] for k in per[0]})
    return out


# -- codistillation between parameter servers ---------------------------------------------------

class _GroupServer(ParameterServerStrategy):
  """One group's emulated parameter server; its workers' loss is the codistillation loss toward
  the other groups' stale copies, read from state["codistill"] (stale, g, weight)."""

  def __init__(self, config, task: Task, loss, groups: int):
    self._codistill_loss, self._groups = loss, groups
    super().__init__(config, task)

  def _gradient(self, state, batch, rng):
    del rng  # the codistillation loss is deterministic
    c = state["codistill"]
    (loss, metrics), grads = jax.value_and_grad(self._codistill_loss, has_aux=True)(
        state["params"], c["stale"], c["g"], batch, c["weight"])
    return grads, (loss, {k: v for k, v in metrics.items() if k != "loss"})

  def _metric_shapes(self, params):
    batch = base.gather_batch(self.data, np.zeros(self.batch_size, np.int32))
    stale = jax.tree.map(lambda p: jnp.zeros((self._groups,) + p.shape, p.dtype), params)
    state = {"params": params, "codistill": {"stale": stale, "g": jnp.int32(0),
                                             "weight": jnp.float32(0)}}
    _, (loss, aux) = jax.eval_shape(self._gradient, state, batch, jax.random.PRNGKey(0))
    return {"loss": loss, **aux}


class CodistillServers(Codistill):
  """`codistill.group='ps'`: each of the G replicas is trained by its own emulated parameter
  server (config.ps: workers, async or ssp, timing, failures); group g is the `ps` run with seed
  + g (its initialisation, data order, simulated timeline), its workers' loss the codistillation
  loss toward the other groups' copies from the last exchange. The G replays run as one vmapped
  program over the groups' schedules (padded to one length); every group applies the same
  number of updates per interval, so exchanges (every `exchange_every` updates) fall between
  intervals, where the copies are refreshed. Rows: the replicas' mean and `_replicas` of every
  metric, the servers' staleness (mean over groups), `sim_time` (the latest group's clock),
  `bytes_pushed` / `bytes_pulled` (within the groups, summed) and `bytes_exchanged` (between
  them). With one group it is the `ps` run; with weight 0, G independent `ps` runs."""

  def __init__(self, config, task: Task, pipeline: pipeline_lib.Pipeline | None = None):
    super().__init__(config, task, pipeline)
    self.servers = []
    for g in range(self.G):
      cg = ml_collections.ConfigDict(config.to_dict())
      cg.train.seed = self.first_seed + g
      self.servers.append(_GroupServer(cg, task, self._loss, self.G))
    self._group_chunk = jax.jit(jax.vmap(self._one_group, in_axes=(0, 0, None, 0, None, None)),
                                donate_argnums=(0,))

  def init(self, rng):
    del rng
    groups = [s.init(jax.random.PRNGKey(self.first_seed + g)) for g, s in enumerate(self.servers)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *groups)
    return jax.device_put({"groups": stacked, "stale": jax.tree.map(jnp.copy, stacked["params"]),
                           "step": jnp.zeros((), jnp.int32)})

  def params(self, state):
    return jax.tree.map(lambda p: p[0], state["groups"]["params"])

  def evaluate(self, state) -> dict:
    return super().evaluate({"params": state["groups"]["params"]})

  def host_state(self) -> dict:
    return {"simulators": [s.simulator.state_dict() for s in self.servers]}

  def load_host_state(self, d: dict) -> None:
    for s, sim in zip(self.servers, d["simulators"]):
      s.simulator.load_state_dict(sim)

  def _one_group(self, state, g, stale, ops, weight, data):
    state = dict(state, codistill={"stale": stale, "g": g, "weight": weight})
    state, (sums, count) = self.servers[0]._async_chunk(state, data, ops)
    state = {k: v for k, v in state.items() if k != "codistill"}
    return state, (sums, count)

  def dispatch(self, state, num_updates: int, step: int | None = None):
    step = self.step(state) if step is None else step
    sums, counts, intervals = None, None, []
    done = 0
    while done < num_updates:
      at = step + done
      m = min(num_updates - done, self.E - at % self.E)     # up to the next exchange
      if at < self.burn_in:
        m = min(m, self.burn_in - at)                       # and to the end of burn-in
      parts = [s.simulator.advance(m) for s in self.servers]
      length = 1 << max(0, (max(len(p.ops) for p in parts) - 1).bit_length())
      ops = jax.tree.map(lambda *xs: np.stack(xs),
                         *[s._encode_ops(p.ops, length) for s, p in zip(self.servers, parts)])
      weight = np.float32(self.weight if at >= self.burn_in else 0.0)
      groups, (part_sums, part_counts) = self._group_chunk(
          state["groups"], jnp.arange(self.G), state["stale"], ops, weight, self.data)
      state = dict(state, groups=groups, step=state["step"] + m)
      if (at + m) % self.E == 0:
        state["stale"] = jax.tree.map(jnp.copy, groups["params"])
      sums = part_sums if sums is None else jax.tree.map(jnp.add, sums, part_sums)
      counts = part_counts if counts is None else counts + part_counts
      intervals.append(parts)
      done += m
    # the simulators' clocks and totals now: they move on when the next chunk is dispatched,
    # before this one is collected
    host = {"sim_time": max(s.simulator.time for s in self.servers),
            **{key: int(sum(s.simulator.totals[key] for s in self.servers))
               for key in ("bytes_pushed", "bytes_pulled", "dropped_gradients", "crashes")}}
    if self.servers[0].ps.consistency == "ssp":
      host["clock_gap_max"] = max(p.max_clock_gap for parts in intervals for p in parts)
    return state, (sums, counts, intervals, host, step + num_updates)

  def collect(self, pending):
    sums, counts, intervals, host, step = pending
    sums, counts = jax.device_get((sums, counts))
    out = {}
    for key, values in sums.items():
      per = np.asarray(values, np.float64) / np.maximum(np.asarray(counts, np.float64), 1.0)
      out[key] = float(per.mean())
      if self.G > 1:
        out[f"{key}_replicas"] = [float(v) for v in per]
    summary = staleness_summary([st for parts in intervals for p in parts for st in p.staleness])
    out.update(staleness_mean=summary["staleness_mean"], staleness_max=summary["staleness_max"])
    out.update(host)
    out["exchanges"] = step // self.E
    out["bytes_exchanged"] = (step // self.E) * self.G * (self.G - 1) * self.model_bytes
    return out
