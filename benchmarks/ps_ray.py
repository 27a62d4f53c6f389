"""The parameter server on real processes (config.ps.backend='ray'): applied updates per second.

Workload W2: MLP 784-512-512-10, synthetic teacher data, batch 64 per worker, SGD lr 0.05 momentum
0.9, async, K = 2, 4, 8 Ray worker processes on this machine (steady state of train.run's loop,
read off its metrics; start-up, from starting Ray to the first gradient, reported apart). In the
same process tree: the emulator (`ps`, backend='emulator', K = 4) and the floor, a jitted lax.scan
of plain SGD at batch 64 (common.scan_floor_rate). `reference_*` are other systems measured on
this machine's kind in one sitting when the backend was planned (Ray's parameter-server example,
a PyTorch RPC parameter server). Prints one JSON line.

  python benchmarks/ps_ray.py [--steps 600]
"""

from __future__ import annotations

import argparse
import tempfile

from common import mlp_config, report, scan_floor_rate, steady_rate
from ps import ps_rate


def ray_run(workers: int, steps: int) -> tuple[float, float]:
  """(updates per second in steady state, start-up seconds) of one real run."""
  from pdist import train
  c = mlp_config(batch_size=64, steps=steps, strategy="ps")
  c.ps.backend, c.ps.workers = "ray", workers
  c.train.log_every, c.train.eval_every, c.train.progress = 100, 0, False
  result = train.run(c, tempfile.mkdtemp(prefix="pdist_bench_ps_ray_"))
  return steady_rate(result.rows), result.summary["ray_startup_seconds"]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=600)
  args = parser.parse_args()
  out = {}
  for k in (2, 4, 8):
    out[f"ray{k}_updates_per_sec"], out[f"ray{k}_startup_seconds"] = ray_run(k, args.steps)
  out["emulator4_updates_per_sec"] = ps_rate(4, "async", 1000)
  out["floor_steps_per_sec"] = scan_floor_rate(mlp_config(batch_size=64, steps=1000), 1000)
  for k in (2, 4, 8):
    out[f"ray{k}_ratio"] = out[f"ray{k}_updates_per_sec"] / out["floor_steps_per_sec"]
  out["ray4_vs_emulator4"] = out["ray4_updates_per_sec"] / out["emulator4_updates_per_sec"]
  report("ps_ray", batch_per_worker=64, steps=args.steps, reference_ray_example_k4=158,
         reference_torch_rpc_k4=255, **out)


if __name__ == "__main__":
  main()
