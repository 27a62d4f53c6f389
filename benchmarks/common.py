"""Shared benchmark helpers: the MLP workload, timing, and the one-JSON-line report."""

from __future__ import annotations

import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


WORKLOAD = os.path.join(ROOT, "experiments", "teacher_mlp.py")


def mlp_config(batch_size: int = 256, steps: int = 1000, strategy: str = "single"):
  """experiments/teacher_mlp.py: MLP 784-512-512-10, teacher data, SGD lr 0.05 momentum 0.9."""
  from pdist import config as config_lib
  return config_lib.load(WORKLOAD, [f"--config.data.batch_size={batch_size}",
                                    f"--config.train.steps={steps}",
                                    f"--config.strategy={strategy}"])


def timed(fn, repeats: int = 3) -> float:
  """Best wall seconds of `repeats` calls of fn() (fn must block on its result)."""
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def machine() -> str:
  import jax
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  return f"{platform.machine()} {os.cpu_count()} cores, {dev.platform}: {kind}"


def steady_rate(rows) -> float:
  """Updates per second of train.run's loop in steady state, off the run's own rows: from the
  first row (the first chunk's compilation is before it) to the last row that is not the final
  one when that one evaluates or checkpoints at the end (the evaluation's compilation, the last
  save and its wait are end costs, not the loop's; on a GPU they were most of a 3000-step run)."""
  first, last = rows[0], rows[-1]
  if "eval_loss" in last and len(rows) > 2:
    last = rows[-2]
  return (last["step"] - first["step"]) / (last["wall_time"] - first["wall_time"])


def report(name: str, **fields) -> None:
  row = {"benchmark": name, "machine": machine(), **fields}
  print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))


# The peak resident memory of this process, for a benchmark's fresh subprocess to print. Read from
# /proc/self/status (VmHWM, reset at exec), not getrusage: a child's ru_maxrss starts from its
# parent's size at fork time, so a large benchmark parent would leak into the child's figure.
PEAK_RSS_MB = ("float([l.split()[1] for l in open('/proc/self/status') "
               "if l.startswith('VmHWM')][0]) / 1024")


def scan_floor_rate(config, steps: int, chunk: int = 100, repeats: int = 3) -> float:
  """The true floor: what a JAX expert would write for the same math — a jitted `lax.scan` of
  `chunk` optimizer steps (config.optim's, built by optax as pdist builds it) over batches already on the device, buffers donated, calls dispatched back to
  back (blocked on once at the end). Steps per second, best of `repeats`."""
  import jax
  import jax.numpy as jnp
  import optax

  from pdist import data, optim, tasks
  ds = data.load(config.data)
  task = tasks.build(config, ds)
  tx = optim.build(config)          # the run's own optimizer (SGD momentum for the MLP workloads)
  params = task.init(jax.random.PRNGKey(0))
  b = config.data.batch_size
  n = min(chunk, ds.num_train // b)
  xs = jnp.asarray(ds.x_train[:n * b].reshape((n, b) + ds.x_train.shape[1:]))
  ys = jnp.asarray(ds.y_train[:n * b].reshape((n, b) + ds.y_train.shape[1:]))
  xs = jnp.concatenate([xs] * (-(-chunk // n)))[:chunk]
  ys = jnp.concatenate([ys] * (-(-chunk // n)))[:chunk]

  def scan(params, opt_state, xs, ys):
    def body(carry, batch):
      p, o = carry
      g = jax.grad(lambda q: task.loss(q, {"x": batch[0], "y": batch[1]}, None)[0])(p)
      updates, o = tx.update(g, o, p)
      return (optax.apply_updates(p, updates), o), None
    (params, opt_state), _ = jax.lax.scan(body, (params, opt_state), (xs, ys))
    return params, opt_state

  run = jax.jit(scan, donate_argnums=(0, 1))
  state = [params, tx.init(params)]
  state[:] = run(*state, xs, ys)
  jax.block_until_ready(state)

  def go():
    p, o = state
    for _ in range(max(1, steps // chunk)):
      p, o = run(p, o, xs, ys)
    jax.block_until_ready(p)
    state[:] = [p, o]

  return max(1, steps // chunk) * chunk / timed(go, repeats)
