"""The parameter server's event simulator: who pushes and pulls what, when, in simulated time.

It runs on the host, ahead of the math, and never looks at parameter values: the timing model
decides the order of events, and the result is a *schedule* that the compiled executor replays.

Asynchronous and stale-synchronous (async, ssp) — one loop per worker:
  pull served at t      the worker's snapshot is the server's state at t (version v)
  ... reply arrives after the pull transfer, the gradient takes a compute time, the push transfer ...
  push arrives at t'    the server applies it: staleness = version now - v, version += 1,
                        the worker's clock (completed iterations) += 1; the worker's next pull
                        request rides behind its push, so it is served at t' right after.
  ssp: a worker with clock c starts its next iteration only when c + 1 - min(clocks) <= s, so the
  fastest clock is never more than s ahead of the slowest (Ho et al. 2013); else it waits, and
  its pull request is sent (latency) once the slowest worker catches up.
  A crash loses the worker's in-flight gradient; after restart_delay it sends a fresh pull request.

Bulk-synchronous (bsp) — rounds: at each barrier every live worker pulls version v, computes and
pushes; the server averages the first K - b gradients to arrive (b = backup workers, Chen et al.
2016), applies them as one update, and the late ones are dropped (those workers are cancelled and
start the next round at once).

Every update applied is one `step`. The simulator's whole state is JSON-able (`state_dict`).
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field

import numpy as np

from pdist.ps.timing import TimingModel


@dataclass
class AsyncOp:
  """One async / ssp replay step: apply worker a's pending gradient (scaled), then let worker p pull.

  apply_worker / pull_worker = -1 means "none". pull_iteration numbers worker p's gradients, which
  picks its batch.
  """
  apply_worker: int = -1
  scale: float = 1.0
  pull_worker: int = -1
  pull_iteration: int = 0


@dataclass
class BspRound:
  """One bsp update: the gradients of `workers` (all computed on the same version) are averaged.

  `round` numbers the rounds, and so each worker's batch in it.
  """
  workers: tuple[int, ...]
  round: int


Op = AsyncOp | BspRound


@dataclass
class Interval:
  """The ops of `advance(n)` and what happened meanwhile."""
  ops: list = field(default_factory=list)
  staleness: list[int] = field(default_factory=list)
  sim_time: float = 0.0
  max_clock_gap: int = 0

  def metrics(self, totals: dict) -> dict:
    return {"sim_time": self.sim_time, **staleness_summary(self.staleness), **totals}


def staleness_summary(staleness) -> dict:
  """staleness_mean, staleness_max and staleness_hist (counts of 0, 1, ...) of some updates."""
  st = np.asarray(staleness, np.int64)
  if not st.size:
    return {"staleness_mean": 0.0, "staleness_max": 0, "staleness_hist": []}
  return {"staleness_mean": float(st.mean()), "staleness_max": int(st.max()),
          "staleness_hist": np.bincount(st).tolist()}


class Simulator:
  """Host-side discrete-event simulation of K workers and a (sharded) server."""

  def __init__(self, ps_config, network, shard_bytes: list[int], seed: int,
               push_bytes: list[int] | None = None):
    """`network`: config.network (or a pdist.network.Network), the links' latency and bandwidth;
    `shard_bytes`: each shard's parameter bytes (a pull); `push_bytes`: a push's bytes per shard
    (default: the same)."""
    self.K = int(ps_config.workers)
    self.consistency = ps_config.consistency
    self.max_staleness = int(ps_config.max_staleness)
    self.backup = int(ps_config.backup_workers)
    self.inverse_lr = ps_config.staleness_lr == "inverse"
    self.timing = TimingModel(ps_config, network, self.K, shard_bytes,
                              shard_bytes if push_bytes is None else push_bytes, seed)
    self.rng = np.random.default_rng([seed, 11])
    self.time = 0.0
    self.version = 0
    self.updates = 0
    self.heap: list[list] = []
    self.seq = 0
    self.up = [True] * self.K
    self.token = [0] * self.K          # bumps when a worker's in-flight work is cancelled
    self.crash_token = [0] * self.K    # bumps when a worker's pending random crash is void
    self.in_flight = [False] * self.K
    self.pulled_version = [0] * self.K
    self.iteration = [0] * self.K
    self.clock = [0] * self.K
    self.waiting: list[int] = []
    self.round = 0
    self.arrived: list[int] = []
    self.totals = {"dropped_gradients": 0, "crashes": 0, "bytes_pushed": 0, "bytes_pulled": 0}
    self.started = False

  # -- event queue ------------------------------------------------------------------------------
  def _schedule(self, time: float, kind: str, worker: int, token: int) -> None:
    heapq.heappush(self.heap, [time, self.seq, kind, worker, token])
    self.seq += 1

  def _start(self) -> None:
    self.started = True
    for t, w in self.timing.crash_at:
      self._schedule(t, "crash", w, -1)
    for w in range(self.K):
      self._arm_random_crash(w)
    if self.consistency == "bsp":
      self._begin_round()
    else:
      for w in range(self.K):
        self._schedule(self.timing.latency, "pull", w, self.token[w])

  def _arm_random_crash(self, w: int) -> None:
    self.crash_token[w] += 1
    t = self.timing.next_crash(self.rng, self.time)
    if t is not None:
      self._schedule(t, "random_crash", w, self.crash_token[w])

  # -- public -----------------------------------------------------------------------------------
  def scripted_crashes_ahead(self) -> list[list]:
    """[time, worker] of config.ps.failures.at's crashes the simulation has not reached."""
    if not self.started:
      return [[t, w] for t, w in self.timing.crash_at]
    return sorted([e[0], e[3]] for e in self.heap if e[2] == "crash")

  def advance(self, num_updates: int) -> Interval:
    """Simulates until `num_updates` more updates have been applied; returns their ops."""
    if not self.started:
      self._start()
    out = Interval()
    target = self.updates + num_updates
    while self.updates < target:
      if not self.heap:
        raise RuntimeError("parameter-server simulation stalled: no worker can make progress")
      time, _, kind, w, token = heapq.heappop(self.heap)
      self.time = max(self.time, time)
      getattr(self, f"_on_{kind}")(w, token, out)
      if self.consistency == "ssp":
        out.max_clock_gap = max(out.max_clock_gap, max(self.clock) - min(self.clock))
    out.sim_time = self.time
    return out

  # -- async / ssp ------------------------------------------------------------------------------
  def _serve_pull(self, w: int) -> tuple[int, int]:
    """The server hands worker w a snapshot now; returns (worker, iteration) for the replay."""
    self.pulled_version[w] = self.version
    it = self.iteration[w]
    self.iteration[w] += 1
    self.in_flight[w] = True
    self.totals["bytes_pulled"] += self.timing.pull_bytes
    done = (self.time + self.timing.pull_transfer + self.timing.compute(self.rng, w)
            + self.timing.push_transfer)
    self._schedule(done, "push", w, self.token[w])
    return w, it

  def _may_start(self, w: int) -> bool:
    if self.consistency != "ssp":
      return True
    return self.clock[w] + 1 - min(self.clock) <= self.max_staleness

  def _on_pull(self, w: int, token: int, out: Interval) -> None:
    if token != self.token[w] or not self.up[w]:
      return
    pw, it = self._serve_pull(w)
    out.ops.append(AsyncOp(pull_worker=pw, pull_iteration=it))

  def _on_push(self, w: int, token: int, out: Interval) -> None:
    if token != self.token[w] or not self.up[w]:
      return
    staleness = self.version - self.pulled_version[w]
    scale = 1.0 / staleness if self.inverse_lr and staleness >= 1 else 1.0
    self.version += 1
    self.updates += 1
    self.clock[w] += 1
    self.in_flight[w] = False
    self.totals["bytes_pushed"] += self.timing.push_bytes
    out.staleness.append(staleness)
    op = AsyncOp(apply_worker=w, scale=scale)
    if self._may_start(w):
      op.pull_worker, op.pull_iteration = self._serve_pull(w)
    else:
      self.waiting.append(w)
    out.ops.append(op)
    self._release_waiting()

  def _release_waiting(self) -> None:
    for v in list(self.waiting):
      if self.up[v] and self._may_start(v):
        self.waiting.remove(v)
        self._schedule(self.time + self.timing.latency, "pull", v, self.token[v])

  # -- failures (all consistency models) ------------------------------------------------------------
  def _on_random_crash(self, w: int, token: int, out: Interval) -> None:
    if token == self.crash_token[w]:
      self._on_crash(w, -1, out)

  def _on_crash(self, w: int, token: int, out: Interval) -> None:
    if not self.up[w]:
      return
    self.up[w] = False
    self.totals["crashes"] += 1
    if self.in_flight[w]:
      self.totals["dropped_gradients"] += 1
      self.in_flight[w] = False
    self.token[w] += 1
    self.crash_token[w] += 1
    if w in self.waiting:
      self.waiting.remove(w)
    self._schedule(self.time + self.timing.restart_delay, "restart", w, self.token[w])

  def _on_restart(self, w: int, token: int, out: Interval) -> None:
    if token != self.token[w] or self.up[w]:
      return
    self.up[w] = True
    self._arm_random_crash(w)
    if self.consistency == "bsp":
      self._bsp_pull(w, extra_latency=self.timing.latency)
    elif self._may_start(w):
      self._schedule(self.time + self.timing.latency, "pull", w, self.token[w])
    else:
      self.waiting.append(w)

  # -- bsp ------------------------------------------------------------------------------------------
  def _begin_round(self) -> None:
    self.arrived = []
    for w in range(self.K):
      if self.up[w]:
        self._bsp_pull(w)

  def _bsp_pull(self, w: int, extra_latency: float = 0.0) -> None:
    self.token[w] += 1
    self.in_flight[w] = True
    self.pulled_version[w] = self.version
    self.totals["bytes_pulled"] += self.timing.pull_bytes
    done = (self.time + extra_latency + self.timing.pull_transfer
            + self.timing.compute(self.rng, w) + self.timing.push_transfer)
    self._schedule(done, "arrive", w, self.token[w])

  def _on_arrive(self, w: int, token: int, out: Interval) -> None:
    if token != self.token[w] or not self.up[w]:
      return
    self.in_flight[w] = False
    self.totals["bytes_pushed"] += self.timing.push_bytes
    self.arrived.append(w)
    if len(self.arrived) < self.K - self.backup:
      return
    # barrier: average the first K - b arrivals, drop (cancel) everyone still computing
    for v in range(self.K):
      if self.in_flight[v]:
        self.totals["dropped_gradients"] += 1
        self.in_flight[v] = False
        self.token[v] += 1
    out.ops.append(BspRound(workers=tuple(sorted(self.arrived)), round=self.round))
    out.staleness.extend([0] * len(self.arrived))
    self.version += 1
    self.updates += 1
    self.round += 1
    for v in self.arrived:
      self.clock[v] += 1
    self._begin_round()

  # -- checkpointing ----------------------------------------------------------------------------
  _FIELDS = ("time", "version", "updates", "heap", "seq", "up", "token", "crash_token",
             "in_flight", "pulled_version", "iteration", "clock", "waiting", "round", "arrived",
             "totals", "started")

  def state_dict(self) -> dict:
    """Everything needed to continue exactly, as JSON-able values."""
    d = {k: getattr(self, k) for k in self._FIELDS}
    d["rng"] = self.rng.bit_generator.state
    return json.loads(json.dumps(d))

  def load_state_dict(self, d: dict) -> None:
    for k in self._FIELDS:
      setattr(self, k, d[k])
    self.heap = [list(e) for e in self.heap]
    heapq.heapify(self.heap)
    self.rng.bit_generator.state = d["rng"]
