"""Tokens per second of the byte-level Transformer LM (experiments/charlm.py: 2 blocks, width
128, 4 heads, context 128, batch 32, Adam) through train.run against the true floor (a jitted
lax.scan of the same Adam steps over batches on the device, buffers donated), alternating, best
of 2 each. Prints one JSON line.

  python benchmarks/charlm.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from common import ROOT, report, scan_floor_rate, steady_rate


def config(steps: int):
  from pdist import config as config_lib
  c = config_lib.load(os.path.join(ROOT, "experiments", "charlm.py"), [])
  c.train.steps, c.train.log_every, c.train.eval_every = steps, 25, 0
  c.optim.schedule, c.optim.warmup_steps = "constant", 0
  c.train.progress, c.train.tensorboard = False, False
  return c


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args()
  from pdist import train
  c = config(args.steps)
  tokens = c.data.batch_size * c.data.seq_len
  ours = floor = 0.0
  for _ in range(2):
    floor = max(floor, scan_floor_rate(c, args.steps, chunk=25, repeats=1))
    ours = max(ours, steady_rate(train.run(c, tempfile.mkdtemp(prefix="pdist_bench_")).rows))
  report("charlm", dtype="float32", tokens_per_step=tokens, steps=args.steps,
         pdist_tokens_per_sec=ours * tokens, floor_tokens_per_sec=floor * tokens,
         ratio_to_scan=ours / floor)


if __name__ == "__main__":
  main()
