"""experiments/lm_large.py (100.9M parameters) as the speed workload of one device: tokens per
second through train.run against the true floor (a jitted lax.scan of the same Adam steps over
batches on the device, buffers donated), in float32 and bfloat16 mixed precision, with the
model FLOP rate 6 N tokens/s (N parameters; attention's T^2 terms left out). The run uses the
`data` preset (replicated data parallelism over the devices there are: one on a one-GPU host).
Prints one JSON line.

  python benchmarks/lm_large.py [--steps 30] [--batch 8] [--tiny]

--tiny: the preset's width-64 model, for a CPU dry run (the 100M model takes tens of seconds an
update on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from common import ROOT, report, scan_floor_rate, steady_rate


def config(steps: int, batch: int, dtype: str, tiny: bool):
  from pdist import config as config_lib
  presets = "data,tiny" if tiny else "data"
  c = config_lib.load(os.path.join(ROOT, "experiments", "lm_large.py") + ":" + presets,
                      [f"--config.model.dtype={dtype}"])
  c.data.batch_size = batch
  c.train.steps, c.train.log_every, c.train.eval_every = steps, max(1, steps // 3), 0
  c.train.progress, c.train.tensorboard = False, False
  c.data.num_test = 8
  return c


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--tiny", action="store_true")
  args = parser.parse_args()
  import jax
  from pdist import train
  fields = {"devices": len(jax.devices()), "device_kind": jax.devices()[0].device_kind}
  for dtype in ("float32", "bfloat16"):
    c = config(args.steps, args.batch, dtype, args.tiny)
    tokens = c.data.batch_size * c.data.seq_len
    result = train.run(c, tempfile.mkdtemp(prefix="pdist_bench_lm_large_"))
    ours = steady_rate(result.rows)
    floor = scan_floor_rate(c, args.steps, chunk=max(1, args.steps // 3), repeats=1)
    params = sum(x.size for x in jax.tree.leaves(result.params))
    fields.update({"params": int(params), "tokens_per_step": tokens,
                   f"{dtype}_pdist_tokens_per_sec": ours * tokens,
                   f"{dtype}_floor_tokens_per_sec": floor * tokens,
                   f"{dtype}_ratio_to_scan": ours / floor,
                   f"{dtype}_model_tflops": 6 * params * ours * tokens / 1e12,
                   f"{dtype}_final_loss": result.rows[-1]["loss"]})
  report("lm_large", steps=args.steps, batch=args.batch, tiny=args.tiny, **fields)


if __name__ == "__main__":
  main()
