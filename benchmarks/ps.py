"""Parameter-server emulation cost: applied updates per second against plain jitted SGD.

Workload: MLP 784-512-512-10, synthetic teacher data, batch 64 per worker, SGD lr 0.05 momentum
0.9. pdist `ps` with async K = 4, 64, 256 and bsp K = 4 (steady state of train.run's loop, read
off its metrics), and in the same process the floor: a jitted lax.scan of plain SGD at batch 64,
buffers donated, data on the device (common.scan_floor_rate). Also the peak resident memory of a K = 256 run (measured in a fresh
subprocess), and the host's side alone: updates per second the event simulator schedules and the
executor encodes into arrays (K = 4, 256). Prints one JSON line.

  python benchmarks/ps.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from common import PEAK_RSS_MB, ROOT, mlp_config, report  # noqa: F401
from common import scan_floor_rate, steady_rate


def ps_config(workers: int, consistency: str, steps: int, num_train: int | None = None):
  c = mlp_config(batch_size=64, steps=steps, strategy="ps")
  c.ps.workers = workers
  c.ps.consistency = consistency
  c.data.partition = "shared" if consistency == "bsp" else "iid"
  if num_train:
    c.data.num_train = num_train
  c.train.log_every = 250
  c.train.progress = False
  return c


def ps_rate(workers: int, consistency: str, steps: int) -> float:
  from pdist import train
  best = 0.0
  for _ in range(3):
    rows = train.run(ps_config(workers, consistency, steps),
                     tempfile.mkdtemp(prefix="pdist_bench_ps_")).rows
    best = max(best, steady_rate(rows))
  return best


def slot_mb() -> float:
  """One in-flight gradient slot (a copy of the parameters), the memory each worker needs."""
  import jax

  from pdist import data, tasks
  c = mlp_config(batch_size=64)
  shapes = jax.eval_shape(tasks.build(c, data.load(c.data)).init, jax.random.PRNGKey(0))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) / 2**20


def peak_memory_mb(workers: int, steps: int) -> tuple[float, float | None]:
  """(host peak RSS, device peak bytes in use where the device reports it) of a fresh process
  running the K-worker async workload, in MB. The training set has 65,536 examples here (205 MB)
  so that K=1024 workers' iid shares hold a batch each (the default 16,384 give them 16)."""
  code = ("import sys, jax; sys.path.insert(0, sys.argv[1] + '/benchmarks');"
          "from ps import ps_config; from pdist import train;"
          "train.run(ps_config(int(sys.argv[2]), 'async', int(sys.argv[3]), 65536));"
          "stats = jax.devices()[0].memory_stats() or {};"
          "peak = stats.get('peak_bytes_in_use');"
          f"print({PEAK_RSS_MB}, 'None' if peak is None else peak / 2**20)")
  out = subprocess.run([sys.executable, "-c", code, ROOT, str(workers), str(steps)],
                       capture_output=True, text=True, check=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))))
  host, device = out.stdout.strip().splitlines()[-1].split()
  return float(host), None if device == "None" else float(device)


def host_rates(workers: int, updates: int = 5000) -> tuple[float, float]:
  """(updates per second the event simulator schedules, updates per second the executor's
  encoding turns into arrays): the host's side alone, which must outrun the device."""
  import time

  from pdist import data, strategies, tasks
  c = ps_config(workers, "async", updates)
  s = strategies.build(c, tasks.build(c, data.load(c.data)))
  t0 = time.perf_counter()
  ops = s.simulator.advance(updates).ops
  t1 = time.perf_counter()
  s._encode_ops(ops, len(ops))
  return updates / (t1 - t0), updates / (time.perf_counter() - t1)


def replay_rate(workers: int, branch_free: bool, updates: int = 1000) -> float:
  """Updates per second of the strategy's own replay (`run` in intervals of 250, after the
  initial pulls and a warm-up interval), with the cond replay (the CPU default) or the
  branch-free one (the accelerator default), chosen explicitly so both are measured anywhere."""
  import time

  import jax

  from pdist import data, strategies, tasks
  c = ps_config(workers, "async", updates)
  s = strategies.ps.ParameterServerStrategy(c, tasks.build(c, data.load(c.data)),
                                            branch_free=branch_free)
  state = s.init(jax.random.PRNGKey(0))
  state, _ = s.run(state, max(250, 2 * workers))
  state, _ = s.run(state, 250)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(max(1, updates // 250)):
    state, _ = s.run(state, 250)
  jax.block_until_ready(state)
  return max(1, updates // 250) * 250 / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=1000)
  args = parser.parse_args()
  floor, out = 0.0, {}
  for k in (4, 256):  # first: after the runs, in the same process, it read up to ~20x lower (why: not found)
    out[f"host{k}_simulate_updates_per_sec"], out[f"host{k}_encode_updates_per_sec"] = \
        host_rates(k)
  for k in (4, 64, 256):  # the floor is measured between the runs, so noise hits both sides
    floor = max(floor, scan_floor_rate(mlp_config(batch_size=64, steps=args.steps), args.steps,
                                       repeats=1))
    out[f"async{k}_updates_per_sec"] = ps_rate(k, "async", args.steps)
  out["bsp4_updates_per_sec"] = ps_rate(4, "bsp", args.steps)
  for k in (4, 256):  # the two replays of the same schedule, alternately
    for branch_free in (False, True):
      name = f"replay{k}_{'branch_free' if branch_free else 'cond'}_updates_per_sec"
      out[name] = replay_rate(k, branch_free, args.steps)
  out["floor_steps_per_sec"] = floor
  for k in (4, 64, 256):
    out[f"async{k}_ratio"] = out[f"async{k}_updates_per_sec"] / floor
  out["async256_vs_async4"] = out["async256_updates_per_sec"] / out["async4_updates_per_sec"]
  for k in (4, 256, 1024):  # a fresh process each: host peak RSS (and device peak where known)
    try:
      out[f"peak_rss_mb_async{k}"], device = peak_memory_mb(k, 500)
      if device is not None:
        out[f"peak_device_mb_async{k}"] = device
    except subprocess.CalledProcessError as e:  # report the rates even if the probe cannot run
      out[f"peak_rss_mb_async{k}"] = f"failed: {e.stderr.strip().splitlines()[-1][:200]}"
  out["slot_mb_per_worker"] = slot_mb()
  report("ps", batch_per_worker=64, steps=args.steps, **out)


if __name__ == "__main__":
  main()
