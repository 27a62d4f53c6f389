"""train.run(config, workdir): the outer loop every strategy shares.

It builds the dataset, task and strategy, asks the strategy for updates a log interval at a time,
evaluates, writes metrics.jsonl / summary.json / config.json and shows progress. Strategies never
write files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax

from pdist import config as config_lib
from pdist import data, metrics, strategies, tasks


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. the loss became non-finite); the message says where and why."""


@dataclasses.dataclass
class Result:
  summary: dict[str, Any]
  state: Any
  strategy: strategies.Strategy
  rows: list[dict[str, Any]]

  @property
  def params(self):
    return self.strategy.params(self.state)


def save_params(path: str, params) -> None:
  """Writes a parameter pytree as .npz, one array per leaf named by its key path."""
  import numpy as np
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})


def load_params(path: str) -> dict:
  """The arrays of a params.npz, keyed by key path (see save_params)."""
  import numpy as np
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _next_stop(step: int, config) -> int:
  """The next step at which to log, evaluate or finish."""
  t = config.train
  stops = [t.steps, (step // t.log_every + 1) * t.log_every]
  if t.eval_every:
    stops.append((step // t.eval_every + 1) * t.eval_every)
  return min(stops)


def run(config, workdir: str | None = None) -> Result:
  """Trains `config` and writes its results to `workdir` (None: write nothing)."""
  config_lib.validate(config)
  is_writer = workdir is not None and jax.process_index() == 0
  if is_writer:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2, sort_keys=True) + "\n")

  dataset = data.load(config.data)
  task = tasks.build(config, dataset)
  strategy = strategies.build(config, task)
  state = strategy.init(jax.random.PRNGKey(config.train.seed))

  writer = metrics.MetricsWriter(workdir, enabled=is_writer) if workdir else None
  steps, eval_every = config.train.steps, config.train.eval_every
  step = strategy.step(state)
  bar = metrics.progress(steps, initial=step,
                         enabled=config.train.progress and jax.process_index() == 0)
  rows: list[dict[str, Any]] = []
  start = time.perf_counter()
  last_row: dict[str, Any] = {}
  try:
    while step < steps:
      n = _next_stop(step, config) - step
      t0 = time.perf_counter()
      state, chunk = strategy.run(state, n)
      step += n
      elapsed = time.perf_counter() - t0
      loss = chunk.get("loss", float("nan"))
      if not math.isfinite(loss):
        raise TrainingError(
            f"the training loss became {loss} by update {step}; lower "
            f"config.optim.learning_rate (now {config.optim.learning_rate}) or set "
            "config.optim.grad_clip")
      row = {"step": step, **chunk}
      if dataset.num_train:
        row["epoch"] = step * strategy.examples_per_update(config) / dataset.num_train
      if (eval_every and step % eval_every == 0) or step == steps:
        row.update(task.evaluate(strategy.params(state)))
      row["steps_per_sec"] = n / elapsed
      row["wall_time"] = time.perf_counter() - start
      if step % config.train.log_every == 0 or step == steps or "eval_loss" in row:
        rows.append(row)
        if writer:
          writer.write(row)
        last_row = row
      bar.update(n)
      bar.set_postfix(loss=f"{loss:.4g}", **({"acc": f"{row['eval_accuracy']:.3f}"}
                                             if "eval_accuracy" in row else {}))
  finally:
    bar.close()
    if writer:
      writer.close()
  wall = time.perf_counter() - start
  summary = {k: v for k, v in last_row.items() if k not in metrics.TIMING_FIELDS}
  summary.update(wall_seconds=wall, updates_per_sec=steps / wall if wall > 0 else 0.0,
                 strategy=config.strategy, steps=steps)
  if is_writer:
    metrics.write_json(os.path.join(workdir, "summary.json"), summary)
    if config.train.save_params:
      save_params(os.path.join(workdir, "params.npz"), strategy.params(state))
  return Result(summary, state, strategy, rows)
