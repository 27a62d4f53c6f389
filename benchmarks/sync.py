"""Synchronous data parallelism: pdist `sync` versus a hand-written jit(shard_map) step.

Workload: MLP 784-512-512-10, synthetic teacher data, global batch 256, SGD lr 0.05 momentum 0.9.
In one process with 8 emulated CPU devices: pdist `sync` over 2 and 8 devices (steady state of
train.run's loop, read off its own metrics) against the scan floor at the same device count
(common.sync_scan_floor_rate: a jitted lax.scan of 50 shard_map steps, batches on the devices,
buffers donated, blocked on every 4 calls as the collective-rendezvous sharp edge in
docs/ARCHITECTURE.md requires) and, beside it, a Python loop of jitted shard_map steps (blocking
every 10 steps), and pdist `single`. Then the 2-process x 1-device loopback run (pdist.launch),
read off its metrics file (benchmarks/sync_processes.py compares that one with its floor and
PyTorch DDP). Prints one JSON line.

  python benchmarks/sync.py [--steps 300]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from common import (ROOT, WORKLOAD, mlp_config, report, steady_rate,  # noqa: E402
                    sync_scan_floor_rate, timed)





def pdist_rate(strategy: str, devices: int, steps: int) -> float:
  from pdist import train
  c = mlp_config(steps=steps, strategy=strategy)
  c.sync.devices = devices
  c.train.log_every = 50
  c.train.progress = False
  return max(steady_rate(train.run(c, tempfile.mkdtemp(prefix="pdist_bench_")).rows)
             for _ in range(2))


def floor_rate(devices: int, steps: int) -> float:
  import jax
  import numpy as np
  import optax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from pdist import data, models
  c = mlp_config()
  ds = data.load(c.data)
  module = models.build(c.model, models.ModelInputs(10, (c.data.dim,)))
  tx = optax.sgd(0.05, momentum=0.9)
  mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  params = jax.device_put(module.init(jax.random.PRNGKey(0), ds.x_train[:1])["params"], rep)
  opt_state = jax.device_put(tx.init(params), rep)
  b = 256
  xs = [jax.device_put(ds.x_train[i * b:(i + 1) * b], split) for i in range(16)]
  ys = [jax.device_put(ds.y_train[i * b:(i + 1) * b], split) for i in range(16)]

  def local(params, opt_state, x, y):
    def loss(p):
      logits = module.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    g = jax.lax.pmean(jax.grad(loss)(jax.lax.pcast(params, "data", to="varying")), "data")
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                               out_specs=(P(), P())))
  state = list(step(params, opt_state, xs[0], ys[0]))
  jax.block_until_ready(state)

  def go():
    p, o = state
    for i in range(steps):
      p, o = step(p, o, xs[i % 16], ys[i % 16])
      if i % 10 == 9:
        jax.block_until_ready(p)
    jax.block_until_ready(p)
    state[:] = [p, o]

  return steps / timed(go, repeats=2)


def two_process_rate(steps: int) -> float:
  from pdist import metrics
  workdir = tempfile.mkdtemp(prefix="pdist_bench_2p_")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  env.pop("XLA_FLAGS", None)
  subprocess.run([sys.executable, "-m", "pdist.launch", "--processes", "2",
                  "--devices-per-process", "1", "--", "--config", WORKLOAD + ":sync",
                  "--workdir", os.path.join(workdir, "run"), f"--config.train.steps={steps}",
                  "--config.train.log_every=50", "--config.train.progress=False"],
                 check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  return steady_rate(metrics.read(os.path.join(workdir, "run")))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()
  out = {}
  for d in (2, 8):  # alternating, best of 2 each
    scan = sync_scan_floor_rate(d, args.steps)
    loop = floor_rate(d, args.steps)
    ours = pdist_rate("sync", d, args.steps)
    scan = max(scan, sync_scan_floor_rate(d, args.steps))
    loop = max(loop, floor_rate(d, args.steps))
    out.update({f"sync{d}_steps_per_sec": ours, f"scan_floor{d}_steps_per_sec": scan,
                f"ratio{d}": ours / scan, f"loop_floor{d}_steps_per_sec": loop,
                f"ratio_to_loop{d}": ours / loop})
  out["single_steps_per_sec"] = pdist_rate("single", 1, args.steps)
  out["two_process_1dev_steps_per_sec"] = two_process_rate(args.steps)
  report("sync", batch=256, steps=args.steps, **out)


if __name__ == "__main__":
  main()
