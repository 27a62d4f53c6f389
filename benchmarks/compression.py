"""Compression cost: the benchmark MLP's training step with each compressor (error feedback on)
against the same step uncompressed, in one process.

Workload: MLP 784-512-512-10, synthetic teacher data, batch 256, SGD lr 0.05 momentum 0.9, `sync`
on one device (the compressor runs on the device's gradient before the emulated exchange, as it
would before a real one). Steady-state steps/s of train.run, read off its metrics; the uncompressed
run is repeated between compressors and the best of its runs is the reference. Prints one JSON
line.

  python benchmarks/compression.py [--steps 300] [--only topk,topk_leaf]

top-k and random-k run over the whole gradient (config.compression.scope="global", the default)
and in each leaf (`topk_leaf`, `randomk_leaf`). `--only` runs the named compressors (labels as
in the output's `<label>_steps_per_sec`) against the uncompressed step.
"""

from __future__ import annotations

import argparse
import tempfile

from common import mlp_config, report, scan_floor_rate, steady_rate

# label: config.compression fields (name first)
COMPRESSORS = {"int8": {"name": "int8"}, "qsgd": {"name": "qsgd", "levels": 16},
               "topk": {"name": "topk", "ratio": 0.01},
               "topk_leaf": {"name": "topk", "ratio": 0.01, "scope": "leaf"},
               "randomk": {"name": "randomk", "ratio": 0.01},
               "randomk_leaf": {"name": "randomk", "ratio": 0.01, "scope": "leaf"},
               "sign": {"name": "sign"}, "powersgd": {"name": "powersgd", "rank": 4}}


def rate(fields: dict, steps: int) -> float:
  from pdist import train
  c = mlp_config(batch_size=256, steps=steps, strategy="sync")
  c.sync.devices = 1
  c.train.log_every = 50
  c.train.progress = False
  for key, value in fields.items():
    c.compression[key] = value
  rows = train.run(c, tempfile.mkdtemp(prefix="pdist_bench_")).rows
  return steady_rate(rows)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--only", default=",".join(COMPRESSORS),
                      help="comma-separated labels, of: " + ", ".join(COMPRESSORS))
  args = parser.parse_args()
  labels = args.only.split(",")
  unknown = [label for label in labels if label not in COMPRESSORS]
  if unknown:
    parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(COMPRESSORS)}")
  plain, out = 0.0, {}
  for label in labels:
    plain = max(plain, rate({}, args.steps))
    out[f"{label}_steps_per_sec"] = rate(COMPRESSORS[label], args.steps)
  plain = max(plain, rate({}, args.steps))
  ratios = {f"{label}_cost": plain / out[f"{label}_steps_per_sec"] - 1 for label in labels}
  scan = scan_floor_rate(mlp_config(batch_size=256, steps=args.steps), args.steps)
  report("compression", batch=256, steps=args.steps, plain_steps_per_sec=plain,
         scan_floor_steps_per_sec=scan, plain_ratio_to_scan=plain / scan, **out, **ratios)


if __name__ == "__main__":
  main()
