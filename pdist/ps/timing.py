"""Simulated time: compute-time distributions, stragglers, network cost and failures.

All randomness comes from one numpy Generator owned by the simulator and is drawn in event order,
so a config gives the same timeline every run. Nothing here depends on parameter values.

- compute: `constant` (= mean) or `lognormal` with the given mean and sigma of log-time
  (mu = log(mean) - sigma^2 / 2, so the mean is kept); stragglers multiply it by `factor`.
- network: a message of B bytes to or from a shard takes latency + B / bandwidth; the shards'
  links work in parallel, so pushing or pulling the whole model takes the max over shards. Pushes
  and pulls have their own sizes per shard (a compressed gradient shrinks the push only).
- failures: each worker crashes as a Poisson process of `rate` per time unit while up, and at the
  scripted (time, worker) pairs; it comes back after `restart_delay`.
"""

from __future__ import annotations

import numpy as np


class TimingModel:
  def __init__(self, ps_config, num_workers: int, pull_bytes: list[int], push_bytes: list[int],
               seed: int):
    self.num_workers = num_workers
    ct = ps_config.compute_time
    self.dist, self.mean, self.spread = ct.dist, float(ct.mean), float(ct.spread)
    n_slow = int(round(ps_config.stragglers.fraction * num_workers))
    slow = np.random.default_rng([seed, 5]).permutation(num_workers)[:n_slow]
    self.slowdown = np.ones(num_workers)
    self.slowdown[slow] = ps_config.stragglers.factor
    self.stragglers = sorted(int(w) for w in slow)
    self.latency = float(ps_config.latency)
    bw = float(ps_config.bandwidth)
    self.pull_transfer = max(self.latency + (b / bw if bw > 0 else 0.0) for b in pull_bytes)
    self.push_transfer = max(self.latency + (b / bw if bw > 0 else 0.0) for b in push_bytes)
    self.pull_bytes = int(sum(pull_bytes))
    self.push_bytes = int(sum(push_bytes))
    self.crash_rate = float(ps_config.failures.rate)
    self.crash_at = sorted((float(t), int(w)) for t, w in ps_config.failures.at)
    self.restart_delay = float(ps_config.failures.restart_delay)

  def compute(self, rng: np.random.Generator, worker: int) -> float:
    base = self.mean
    if self.dist == "lognormal" and self.spread > 0:
      base = self.mean * float(np.exp(self.spread * rng.standard_normal() - self.spread ** 2 / 2))
    return base * float(self.slowdown[worker])

  def next_crash(self, rng: np.random.Generator, now: float) -> float | None:
    if self.crash_rate <= 0:
      return None
    return now + float(rng.exponential(1.0 / self.crash_rate))
