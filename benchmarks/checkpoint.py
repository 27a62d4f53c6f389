"""Checkpoint cost: save/restore bandwidth (plain and encrypted) and the cost on training.

1. A state of 10M float32 parameters plus SGD momentum (~80 MB): seconds and MB/s to save (until
   the write is complete) and to restore, plain and AES-256-GCM encrypted, next to this disk's
   bandwidth measured in the same run (the same bytes written with numpy and fsync).
2. The sync MLP workload (experiments/teacher_mlp.py:sync, batch 256) with a checkpoint every 100
   updates versus none, as a ratio of steady-state step rates (async checkpointing).
Prints one JSON line.

  python benchmarks/checkpoint.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from common import mlp_config, report, steady_rate


def big_state():
  import jax.numpy as jnp
  import optax
  params = {f"layer{i}": jnp.full((1000, 1000), float(i), jnp.float32) for i in range(10)}
  tx = optax.sgd(0.1, momentum=0.9)
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def disk_mb_per_sec(nbytes: int, directory: str) -> float:
  import numpy as np
  data = np.ones(nbytes // 4, np.float32)
  path = os.path.join(directory, "disk_probe.bin")
  t0 = time.perf_counter()
  with open(path, "wb") as f:
    data.tofile(f)
    f.flush()
    os.fsync(f.fileno())
  dt = time.perf_counter() - t0
  os.remove(path)
  return nbytes / 1e6 / dt


def save_restore(state, key, directory):
  import jax
  from pdist.checkpoint import Checkpointer
  best_save, best_restore = float("inf"), float("inf")
  for i in range(3):
    d = os.path.join(directory, f"ckpt{i}")
    ckpt = Checkpointer(d, keep=1, async_save=True, key=key)
    t0 = time.perf_counter()
    ckpt.save(1, state, {}, {"bench": 1})
    t_return = time.perf_counter() - t0
    ckpt.wait()
    best_save = min(best_save, time.perf_counter() - t0)
    t0 = time.perf_counter()
    step, restored, _ = ckpt.restore_latest(state, {"bench": 1})
    jax.block_until_ready(restored)
    best_restore = min(best_restore, time.perf_counter() - t0)
    ckpt.close()
    shutil.rmtree(d)
  return best_save, best_restore, t_return


def training_ratio(steps: int, interval: int = 100) -> float:
  from pdist import train
  rates = {}
  for every in (0, interval, 0, interval):
    c = mlp_config(steps=steps, strategy="sync")
    c.checkpoint.every = every
    c.train.progress = False
    rate = steady_rate(train.run(c, tempfile.mkdtemp(prefix="pdist_bench_ck_")).rows)
    rates[every] = max(rates.get(every, 0.0), rate)
  return rates[interval] / rates[0], rates[0], rates[interval]


def main():
  import argparse
  parser = argparse.ArgumentParser()
  parser.add_argument("--no-encrypt", action="store_true", help="skip the encrypted round trip")
  parser.add_argument("--steps", type=int, default=1000, help="training updates per run")
  parser.add_argument("--every", type=int, default=100, help="updates between checkpoints")
  args = parser.parse_args()
  import jax
  state = jax.block_until_ready(big_state())
  nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
  directory = tempfile.mkdtemp(prefix="pdist_bench_ckpt_")
  disk = max(disk_mb_per_sec(nbytes, directory) for _ in range(3))
  plain_save, plain_restore, plain_return = save_restore(state, None, directory)
  nan = float("nan")
  enc_save, enc_restore, enc_return = ((nan, nan, nan) if args.no_encrypt else
                                       save_restore(state, os.urandom(32), directory))
  ratio, rate_none, rate_ckpt = training_ratio(args.steps, args.every)
  mb = nbytes / 1e6
  report("checkpoint", state_mb=mb, disk_write_mb_per_sec=disk,
         plain_save_s=plain_save, plain_save_mb_per_sec=mb / plain_save,
         plain_save_returns_s=plain_return,
         plain_restore_s=plain_restore, plain_restore_mb_per_sec=mb / plain_restore,
         encrypted_save_s=enc_save, encrypted_save_mb_per_sec=mb / enc_save,
         encrypted_restore_s=enc_restore, encrypted_restore_mb_per_sec=mb / enc_restore,
         train_steps_per_sec_no_ckpt=rate_none, train_steps_per_sec_ckpt=rate_ckpt,
         checkpoint_every=args.every, train_rate_ratio=ratio)
  shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  main()
