"""Single-device training rate: pdist's own loop versus a minimal hand-written jitted step.

Workload: MLP 784-512-512-10, synthetic teacher data, batch 256, SGD lr 0.05 momentum 0.9, float32.
pdist is timed through train.run (the path `python -m pdist` takes: metrics file, progress bar
and all), in steady state (see pdist_rate) and end to end. The floor that counts is
common.scan_floor_rate: a jitted lax.scan of 100 steps, buffers donated, data on the device,
dispatched back to back; a Python loop of jitted steps is reported beside it. Both run in this process, alternately three times, best of each;
prints one JSON line.

  python benchmarks/single_device.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import tempfile

from common import mlp_config, report, scan_floor_rate, steady_rate, timed


def floor_rate(config, steps: int, repeats: int = 3) -> float:
  import jax
  import jax.numpy as jnp
  import optax

  from pdist import data, tasks
  ds = data.load(config.data)
  task = tasks.build(config, ds)
  tx = optax.sgd(config.optim.learning_rate, momentum=config.optim.momentum)
  params = task.init(jax.random.PRNGKey(0))
  opt_state = tx.init(params)
  b = config.data.batch_size
  xs = [jnp.asarray(ds.x_train[i * b:(i + 1) * b]) for i in range(16)]
  ys = [jnp.asarray(ds.y_train[i * b:(i + 1) * b]) for i in range(16)]

  @jax.jit
  def step(params, opt_state, x, y):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(task_apply(p, x), y).mean()
    g = jax.grad(loss)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  from pdist import models
  module = models.build(config.model, models.ModelInputs(10, (config.data.dim,)))

  def task_apply(p, x):
    return module.apply({"params": p}, x)

  state = [params, opt_state]

  def go():
    p, o = state
    for i in range(steps):
      p, o = step(p, o, xs[i % 16], ys[i % 16])
    jax.block_until_ready(p)
    state[:] = [p, o]

  go_warm = step(params, opt_state, xs[0], ys[0])
  jax.block_until_ready(go_warm)
  return steps / timed(go, repeats)


def pdist_rate(config, steps: int, repeats: int = 3) -> tuple[float, float, object]:
  """(steady-state rate of train.run's loop, end-to-end rate including set-up and compilation,
  the final parameters).

  The steady state is read off the run's own metrics (common.steady_rate: from the first logged
  row to the last one before the final evaluation), so it covers everything the loop does per interval (strategy, metrics file,
  progress bar) but not data generation and the first chunk's compilation.
  """
  from pdist import train
  config.train.steps = steps
  best_loop, best_total = 0.0, 0.0
  for _ in range(repeats):
    result = train.run(config, tempfile.mkdtemp(prefix="pdist_bench_"))
    best_loop = max(best_loop, steady_rate(result.rows))
    best_total = max(best_total, result.summary["updates_per_sec"])
  return best_loop, best_total, result.params


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=256)
  args = parser.parse_args()
  config = mlp_config(batch_size=args.batch, steps=args.steps)
  one_row = config.copy_and_resolve_references()
  one_row.train.updates_per_call = one_row.train.log_every  # one log row per compiled call
  floor = scan = ours = end_to_end = ours_one_row = 0.0
  for _ in range(3):  # alternate, best of each, so a noisy neighbour hits both sides alike
    scan = max(scan, scan_floor_rate(config, args.steps, repeats=1))
    floor = max(floor, floor_rate(config, args.steps, repeats=1))
    loop, total, params = pdist_rate(config, args.steps, repeats=1)
    ours, end_to_end = max(ours, loop), max(end_to_end, total)
    loop, _, params_one_row = pdist_rate(one_row, args.steps, repeats=1)
    ours_one_row = max(ours_one_row, loop)
  import jax
  import numpy as np
  # the default's calls (several rows each on an accelerator) give one row a call's parameters
  same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                  jax.tree.leaves(params_one_row)))
  # pdist_steps_per_sec: the default (train.updates_per_call=0: calls sized by time on an
  # accelerator, one log row a call on a CPU host); one_row: one log row a call everywhere
  report("single_device", batch=args.batch, steps=args.steps, pdist_steps_per_sec=ours,
         scan_floor_steps_per_sec=scan, ratio_to_scan=ours / scan,
         loop_floor_steps_per_sec=floor, ratio_to_loop=ours / floor,
         pdist_one_row_per_call_steps_per_sec=ours_one_row,
         default_params_equal_one_row_per_call=same,
         pdist_end_to_end_steps_per_sec=end_to_end)


if __name__ == "__main__":
  main()
