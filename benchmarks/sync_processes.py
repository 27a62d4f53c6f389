"""`sync` across processes: P processes x 1 CPU device on loopback (jax.distributed, gloo).

Workload: MLP 784-512-512-10, teacher data, global batch 256 (256/P per process), SGD lr 0.05
momentum 0.9. In the same process group, alternating: pdist `sync` through train.run with one
all-reduce per leaf (`sync.bucket_mb=0`, before buckets) and with the default buckets, and the
floor: a hand-written jitted `lax.scan` of the same shard_map step (batches already on the
devices, buffers donated, `pmean` of the gradient pytree, dispatched back to back). With
`--ddp-python PYTHON` (an environment with torch, see ddp_reference.py) PyTorch
DistributedDataParallel runs on the same workload in the same sitting. Prints one JSON line.

  python benchmarks/sync_processes.py [--steps 400] [--ddp-python /tmp/torchvenv/bin/python]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile

from common import ddp_rate, mlp_config, run_members, steady_rate, sync_scan_floor_rate



def pdist_rate(steps: int, bucket_mb: float, tag: str) -> float:
  """pdist `sync` through train.run (its own rows, steady state)."""
  from pdist import train
  c = mlp_config(steps=steps, strategy="sync")
  c.sync.bucket_mb = bucket_mb
  c.train.log_every = 50
  c.train.progress = False
  return steady_rate(train.run(c, os.path.join(tempfile.gettempdir(), tag)).rows)


def sync_default_bucket_mb() -> float:
  from pdist.strategies import sync
  return sync.sync_config().bucket_mb


def member(args) -> None:
  """One process of the group: every variant, alternately, `--repeats` times."""
  import jax
  jax.config.update("jax_num_cpu_devices", 1)
  jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.processes,
                             process_id=args.process_id,
                             coordinator_bind_address=args.coordinator)
  best: dict[str, float] = {}
  variants = []
  for mb in args.bucket_mb:
    variants.append((f"pdist_{mb:g}", functools.partial(pdist_rate, args.steps, mb)))
    variants.append((f"floor_{mb:g}", functools.partial(sync_scan_floor_rate, 0, args.steps, bucket_mb=mb)))
  for r in range(args.repeats):
    for name, fn in variants:
      rate = fn(f"{args.tag}_{name}_{r}") if name.startswith("pdist") else fn()
      best[name] = max(best.get(name, 0.0), rate)
  if args.process_id == 0:
    print(json.dumps(best), flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--ddp-python", default=None)
  parser.add_argument("--bucket-mb", type=float, nargs="+", default=[0.0, 1.0],
                      help="sync.bucket_mb values to compare (0 = one all-reduce per leaf)")
  parser.add_argument("--coordinator", help=argparse.SUPPRESS)
  parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--tag", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.coordinator:
    return member(args)
  rates = run_members(__file__, "sync_processes", args.processes, [
      "--steps", args.steps, "--repeats", args.repeats, "--bucket-mb", *args.bucket_mb])
  row = {f"{k}_steps_per_sec": v for k, v in rates.items()}
  default = sync_default_bucket_mb()
  if f"pdist_{default:g}" in rates and "floor_0" in rates:
    row["default_over_floor"] = rates[f"pdist_{default:g}"] / rates["floor_0"]
  if args.ddp_python:
    row["ddp_steps_per_sec"] = ddp_rate(args.ddp_python, args.processes, args.steps)
    if f"pdist_{default:g}" in rates:
      row["default_over_ddp"] = rates[f"pdist_{default:g}"] / row["ddp_steps_per_sec"]
  from common import report
  report("sync_processes", processes=args.processes, batch=256, steps=args.steps, **row)


if __name__ == "__main__":
  main()
