"""A compute-bound workload: where pdist's ratio to the floor should be ~1 on any device, so a
ratio below 1 elsewhere is fixed cost, not hidden by slow arithmetic.

Workload: MLP 784-2048-2048-10 on teacher data, batch 1024, SGD momentum 0.9 (~37 GFLOP a step),
`single` through train.run (steady state, read off its metrics) against common.scan_floor_rate
(a jitted lax.scan with donated buffers, data on the device), alternating, best of 2. Prints one
JSON line.

  python benchmarks/compute_bound.py [--steps 40]
"""

from __future__ import annotations

import argparse
import tempfile

from common import mlp_config, report, scan_floor_rate, steady_rate


def config(steps: int):
  c = mlp_config(batch_size=1024, steps=steps)
  c.model.hidden = (2048, 2048)
  c.train.log_every = 10
  c.train.progress = False
  c.checkpoint.every = 0
  return c


def pdist_rate(steps: int) -> float:
  from pdist import train
  rows = train.run(config(steps), tempfile.mkdtemp(prefix="pdist_bench_")).rows
  return steady_rate(rows)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=40)
  args = parser.parse_args()
  floor = ours = 0.0
  for _ in range(2):
    floor = max(floor, scan_floor_rate(config(args.steps), args.steps, chunk=10, repeats=1))
    ours = max(ours, pdist_rate(args.steps))
  report("compute_bound", batch=1024, hidden=2048, steps=args.steps, pdist_steps_per_sec=ours,
         scan_floor_steps_per_sec=floor, ratio_to_scan=ours / floor)


if __name__ == "__main__":
  main()
