"""The reference for `sync` across processes: PyTorch DistributedDataParallel on the same workload.

MLP 784-512-512-10, global batch 256 split over P processes (gloo, on 127.0.0.1), SGD lr 0.05
momentum 0.9, float32, random data already in memory. Prints one JSON line with the steady-state
steps per second (after `--warmup` steps). PyTorch is not one of pdist's dependencies: run this in
its own environment, e.g.

  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
  /tmp/torchvenv/bin/python benchmarks/ddp_reference.py --processes 2

`--threads` sets each process's intra-op threads (default: torch's, i.e. the machine's cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def worker(rank: int, world: int, port: int, steps: int, warmup: int, threads: int, out,
           bucket_mb: float = 25.0):
  import torch
  import torch.distributed as dist
  from torch import nn
  if threads:
    torch.set_num_threads(threads)
  os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
  dist.init_process_group("gloo", rank=rank, world_size=world)
  torch.manual_seed(0)
  model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                        nn.Linear(512, 10))
  ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_mb)
  opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
  b = 256 // world
  g = torch.Generator().manual_seed(rank)
  xs = torch.randn(16, b, 784, generator=g)
  ys = torch.randint(0, 10, (16, b), generator=g)
  loss_fn = nn.CrossEntropyLoss()

  def step(i):
    opt.zero_grad(set_to_none=True)
    loss_fn(ddp(xs[i % 16]), ys[i % 16]).backward()
    opt.step()

  for i in range(warmup):
    step(i)
  dist.barrier()
  t0 = time.perf_counter()
  for i in range(steps):
    step(i)
  dist.barrier()
  rate = steps / (time.perf_counter() - t0)
  if rank == 0:
    out.put(rate)
  dist.destroy_process_group()


def main():
  import torch
  import torch.multiprocessing as mp
  parser = argparse.ArgumentParser()
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--warmup", type=int, default=30)
  parser.add_argument("--threads", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP's bucket_cap_mb")
  args = parser.parse_args()
  ctx = mp.get_context("spawn")
  rates = []
  for _ in range(args.repeats):
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args.processes, port,
                                              args.steps, args.warmup, args.threads, q,
                                              args.bucket_mb))
             for port in [free_port()] for r in range(args.processes)]
    for p in procs:
      p.start()
    rates.append(q.get())
    for p in procs:
      p.join()
  print(json.dumps({"benchmark": "ddp_reference", "machine": f"{platform.machine()} "
                    f"{os.cpu_count()} cores, cpu", "torch": torch.__version__,
                    "processes": args.processes, "batch": 256, "steps": args.steps,
                    "threads": args.threads or torch.get_num_threads(), "bucket_mb": args.bucket_mb,
                    "ddp_steps_per_sec": round(max(rates), 2)}))


if __name__ == "__main__":
  main()
