"""Simulated time: compute-time distributions, stragglers, network cost and failures.

All randomness comes from one numpy Generator owned by the simulator and is drawn in event order,
so a config gives the same timeline every run. Nothing here depends on parameter values.

- compute: `constant` (= mean) or `lognormal` with the given mean and sigma of log-time
  (mu = log(mean) - sigma^2 / 2, so the mean is kept); stragglers multiply it by `factor`.
- network: a message of B bytes to or from a shard costs what config.network's links price it at
  (pdist/network.py: latency + B / bandwidth); the shards' links work in parallel, so pushing or
  pulling the whole model takes the max over shards. Pushes and pulls have their own sizes per
  shard (a compressed gradient shrinks the push only).
- failures: each worker crashes as a Poisson process of `rate` per time unit while up, and at the
  scripted (time, worker) pairs; it comes back after `restart_delay`.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from pdist.network import Network
from pdist.registry import ConfigError, check_choice, check_positive


def add_timing_fields(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fields of the timing model, shared by config.ps and config.federated: compute time per
  unit of work (a gradient; a federated client's local step) and stragglers. The links (latency,
  bandwidth) are config.network's, shared by every strategy that reports simulated time."""
  c.compute_time = ml_collections.ConfigDict()
  c.compute_time.dist = "constant"  # constant / lognormal
  c.compute_time.mean = 1.0
  c.compute_time.spread = 0.0       # lognormal: sigma of log(time)
  c.stragglers = ml_collections.ConfigDict()
  c.stragglers.fraction = 0.0       # share of workers (clients) that are slow
  c.stragglers.factor = 1.0         # how many times slower
  return c


def validate_timing(config, group: str, population: int, who: str) -> None:
  """Checks the timing fields of config.<group> for `population` workers (clients)."""
  g = config[group]
  check_choice(config, f"{group}.compute_time.dist", ("constant", "lognormal"))
  check_positive(config, f"{group}.compute_time.mean", f"{group}.stragglers.factor")
  check_positive(config, f"{group}.compute_time.spread", f"{group}.stragglers.fraction",
                 allow_zero=True)
  if g.stragglers.fraction > 1:
    raise ConfigError(f"config.{group}.stragglers.fraction must be in [0, 1], got "
                      f"{g.stragglers.fraction}")
  if g.stragglers.fraction > 0 and round(g.stragglers.fraction * population) == 0:
    raise ConfigError(f"config.{group}.stragglers.fraction={g.stragglers.fraction} of "
                      f"{population} {who} rounds to no straggler; use at least "
                      f"{0.5 / population:.3g}")


class TimingModel:
  """Compute times, stragglers, transfers and crashes of `num_workers` workers (clients).

  `ps_config`: the group with the timing fields (config.ps, config.federated; its `failures`, if
  it has them); `network`: config.network or a pdist.network.Network, which prices every message
  (one formula for all strategies). `pull_bytes` / `push_bytes`: a pull's / push's bytes per
  shard (a federated round: [download], [upload]).
  """

  def __init__(self, ps_config, network, num_workers: int, pull_bytes: list[int],
               push_bytes: list[int], seed: int):
    self.num_workers = num_workers
    ct = ps_config.compute_time
    self.dist, self.mean, self.spread = ct.dist, float(ct.mean), float(ct.spread)
    n_slow = int(round(ps_config.stragglers.fraction * num_workers))
    slow = np.random.default_rng([seed, 5]).permutation(num_workers)[:n_slow]
    self.slowdown = np.ones(num_workers)
    self.slowdown[slow] = ps_config.stragglers.factor
    self.stragglers = sorted(int(w) for w in slow)
    self.network = network if isinstance(network, Network) else Network(network)
    self.latency = self.network.latency   # a request without payload (a pull request)
    self.pull_transfer = max(self.network.message(b) for b in pull_bytes)
    self.push_transfer = max(self.network.message(b) for b in push_bytes)
    self.pull_bytes = int(sum(pull_bytes))
    self.push_bytes = int(sum(push_bytes))
    failures = ps_config.failures if "failures" in ps_config else None
    self.crash_rate = float(failures.rate) if failures else 0.0
    self.crash_at = sorted((float(t), int(w)) for t, w in failures.at) if failures else []
    self.restart_delay = float(failures.restart_delay) if failures else 0.0

  def compute(self, rng: np.random.Generator, worker: int) -> float:
    base = self.mean
    if self.dist == "lognormal" and self.spread > 0:
      base = self.mean * float(np.exp(self.spread * rng.standard_normal() - self.spread ** 2 / 2))
    return base * float(self.slowdown[worker])

  def compute_many(self, rng: np.random.Generator, workers: np.ndarray) -> np.ndarray:
    """`compute` for many workers at once (one draw each, in order)."""
    base = np.full(len(workers), self.mean)
    if self.dist == "lognormal" and self.spread > 0:
      base = self.mean * np.exp(self.spread * rng.standard_normal(len(workers))
                                - self.spread ** 2 / 2)
    return base * self.slowdown[workers]

  def next_crash(self, rng: np.random.Generator, now: float) -> float | None:
    if self.crash_rate <= 0:
      return None
    return now + float(rng.exponential(1.0 / self.crash_rate))
