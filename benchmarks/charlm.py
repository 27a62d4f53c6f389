"""Tokens per second of the byte-level Transformer LM (experiments/charlm.py: 2 blocks, width
128, 4 heads, context 128, batch 32, Adam) through train.run against the true floor (a jitted
lax.scan of the same Adam steps over batches on the device, buffers donated), alternating, best
of 2 each; in float32 and in bfloat16 mixed precision (config.model.dtype). Prints one JSON line.

  python benchmarks/charlm.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from common import ROOT, report, scan_floor_rate, steady_rate


def config(steps: int, dtype: str = "float32"):
  from pdist import config as config_lib
  c = config_lib.load(os.path.join(ROOT, "experiments", "charlm.py"), [f"--config.model.dtype={dtype}"])
  c.train.steps, c.train.log_every, c.train.eval_every = steps, 25, 0
  c.optim.schedule, c.optim.warmup_steps = "constant", 0
  c.train.progress, c.train.tensorboard = False, False
  return c


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args()
  from pdist import train
  fields = {}
  for dtype in ("float32", "bfloat16"):
    c = config(args.steps, dtype)
    tokens = c.data.batch_size * c.data.seq_len
    ours = floor = 0.0
    for _ in range(2):
      floor = max(floor, scan_floor_rate(c, args.steps, chunk=25, repeats=1))
      ours = max(ours, steady_rate(train.run(c, tempfile.mkdtemp(prefix="pdist_bench_")).rows))
    fields.update({f"{dtype}_pdist_tokens_per_sec": ours * tokens,
                   f"{dtype}_floor_tokens_per_sec": floor * tokens,
                   f"{dtype}_ratio_to_scan": ours / floor})
  fields["bf16_speedup"] = (fields["bfloat16_pdist_tokens_per_sec"]
                            / fields["float32_pdist_tokens_per_sec"])
  report("charlm", tokens_per_step=tokens, steps=args.steps, **fields)


if __name__ == "__main__":
  main()
