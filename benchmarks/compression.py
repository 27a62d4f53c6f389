"""Compression cost: the benchmark MLP's training step with each compressor (error feedback on)
against the same step uncompressed, in one process.

Workload: MLP 784-512-512-10, synthetic teacher data, batch 256, SGD lr 0.05 momentum 0.9, `sync`
on one device (the compressor runs on the device's gradient before the emulated exchange, as it
would before a real one). Steady-state steps/s of train.run, read off its metrics; the uncompressed
run is repeated between compressors and the best of its runs is the reference. Prints one JSON
line.

  python benchmarks/compression.py [--steps 300]
"""

from __future__ import annotations

import argparse
import tempfile

from common import mlp_config, report, scan_floor_rate, steady_rate

COMPRESSORS = (("int8", {}), ("qsgd", {"levels": 16}), ("topk", {"ratio": 0.01}),
               ("randomk", {"ratio": 0.01}), ("sign", {}), ("powersgd", {"rank": 4}))


def rate(name: str, fields: dict, steps: int) -> float:
  from pdist import train
  c = mlp_config(batch_size=256, steps=steps, strategy="sync")
  c.sync.devices = 1
  c.train.log_every = 50
  c.train.progress = False
  c.compression.name = name
  for key, value in fields.items():
    c.compression[key] = value
  rows = train.run(c, tempfile.mkdtemp(prefix="pdist_bench_")).rows
  return steady_rate(rows)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()
  plain, out = 0.0, {}
  for name, fields in COMPRESSORS:
    plain = max(plain, rate("none", {}, args.steps))
    out[f"{name}_steps_per_sec"] = rate(name, fields, args.steps)
  plain = max(plain, rate("none", {}, args.steps))
  ratios = {f"{name}_cost": plain / out[f"{name}_steps_per_sec"] - 1 for name, _ in COMPRESSORS}
  scan = scan_floor_rate(mlp_config(batch_size=256, steps=args.steps), args.steps)
  report("compression", batch=256, steps=args.steps, plain_steps_per_sec=plain,
         scan_floor_steps_per_sec=scan, plain_ratio_to_scan=plain / scan, **out, **ratios)


if __name__ == "__main__":
  main()
