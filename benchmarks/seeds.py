"""Many seeds in one program: wall time per seed for N = 1, 8, 64 vmapped copies of `single`.

Workload: experiments/mnist1d.py:mlp (MLP 40-256-256-10, Adam, batch 100), 500 updates, progress
bar off; steady-state seconds per seed (between the first and the last logged row) and end to end,
against N separate runs' cost estimated by N x the one-seed run. Prints one JSON line.

  python benchmarks/seeds.py [--steps 500]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from common import ROOT, report, steady_rate


def seconds(seeds: int, steps: int) -> tuple[float, float]:
  from pdist import config as config_lib
  from pdist import train
  c = config_lib.load(os.path.join(ROOT, "experiments", "mnist1d.py") + ":mlp",
                      [f"--config.train.seeds={seeds}", f"--config.train.steps={steps}",
                       "--config.train.log_every=100", "--config.train.eval_every=0",
                       "--config.train.progress=False", "--config.checkpoint.every=0"])
  result = train.run(c, tempfile.mkdtemp(prefix="pdist_bench_"))
  steady = steps / steady_rate(result.rows)
  return steady, result.summary["wall_seconds"]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=500)
  args = parser.parse_args()
  out = {}
  for n in (1, 8, 64):
    steady, total = seconds(n, args.steps)
    out[f"seeds{n}_steady_seconds_per_seed"] = steady / n
    out[f"seeds{n}_total_seconds"] = total
  out["speedup_64_vs_separate"] = out["seeds1_steady_seconds_per_seed"] / \
      out["seeds64_steady_seconds_per_seed"]
  report("seeds", steps=args.steps, **out)


if __name__ == "__main__":
  main()
