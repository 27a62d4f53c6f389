"""DP-SGD cost: pdist with DP-SGD (per-example clipping, Poisson batches, noise, accountant)
against the same run without privacy, in one process.

Workload: MLP 784-512-512-10, synthetic teacher data (4000 examples), batch 256 (the expected
batch under Poisson sampling, padded to the run's cap: 388, P(overflow) <= 1e-10 delta), SGD lr
0.05 momentum 0.9; DP-SGD with
clip 1.0 and noise multiplier 1.1, and the same on fixed shuffled batches of 256 (the cost of
clipping and noise alone).
Both runs go through train.run (metrics file on, progress bar off) and are read off their own
metrics (steady state between the first and last logged rows), alternating three times, best of
each. Peak resident memory of each is measured in a fresh subprocess. Prints one JSON line.

  python benchmarks/dp.py [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from common import PEAK_RSS_MB, ROOT, mlp_config, report, scan_floor_rate
from common import steady_rate as rows_rate


def dp_config(steps: int, mode: str):
  """mode: plain (no privacy), poisson (DP-SGD as meant), shuffle (DP-SGD's clipping and noise
  on fixed batches: the cost of privacy without the padding that Poisson batches need)."""
  c = mlp_config(batch_size=256, steps=steps)
  c.train.log_every = 50
  c.train.progress = False
  if mode != "plain":
    c.privacy.mechanism = "dpsgd"
    c.privacy.clip_norm = 1.0
    c.privacy.noise_multiplier = 1.1
    c.privacy.sampling = mode
  return c


def steady_rate(mode: str, steps: int, caps: list | None = None) -> float:
  """Steady steps per second; appends the Poisson run's batch cap to `caps`."""
  from pdist import train
  result = train.run(dp_config(steps, mode), tempfile.mkdtemp(prefix="pdist_bench_"))
  if caps is not None and result.strategy.privacy is not None and result.strategy.privacy.poisson:
    caps.append(result.strategy.privacy.cap)
  return rows_rate(result.rows)


def peak_rss_mb(mode: str, steps: int) -> float:
  code = ("import sys; sys.path.insert(0, 'benchmarks'); from dp import steady_rate; "
          f"steady_rate({mode!r}, {steps}); print({PEAK_RSS_MB})")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=900)
  try:
    return float(out.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError):
    return float("nan")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()
  rates = {"plain": 0.0, "poisson": 0.0, "shuffle": 0.0}
  scan = 0.0
  caps = []
  for _ in range(3):
    for mode in rates:
      rates[mode] = max(rates[mode], steady_rate(mode, args.steps, caps))
    # the plain workload's true floor (a jitted scan of the same SGD steps)
    scan = max(scan, scan_floor_rate(dp_config(args.steps, "plain"), args.steps, repeats=1))
  # the run's own cap (it printed the default tolerance's 355 before), and the share of the
  # step's rows that are padding on average
  report("dp", batch=256, batch_cap=caps[0], padding_share=1 - 256 / caps[0], steps=args.steps,
         clip_norm=1.0, noise_multiplier=1.1, plain_steps_per_sec=rates["plain"],
         scan_floor_steps_per_sec=scan, plain_ratio_to_scan=rates["plain"] / scan,
         dp_steps_per_sec=rates["poisson"], dp_slowdown=rates["plain"] / rates["poisson"],
         dp_shuffle_steps_per_sec=rates["shuffle"],
         dp_shuffle_slowdown=rates["plain"] / rates["shuffle"],
         peak_rss_mb_plain=peak_rss_mb("plain", args.steps),
         peak_rss_mb_dp=peak_rss_mb("poisson", args.steps))


if __name__ == "__main__":
  main()
