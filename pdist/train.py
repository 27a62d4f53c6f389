"""train.run(config, workdir): the outer loop every strategy shares.

It builds the dataset, task and strategy, asks the strategy for updates a log interval at a time,
evaluates, writes metrics.jsonl / summary.json / config.json and shows progress. Strategies never
write files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
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
  """The next step at which to log, evaluate, checkpoint or finish."""
  t = config.train
  stops = [t.steps, (step // t.log_every + 1) * t.log_every]
  for every in (t.eval_every, config.checkpoint.every):
    if every:
      stops.append((step // every + 1) * every)
  return min(stops)


class Preempted(RuntimeError):
  """SIGTERM or SIGINT arrived; a checkpoint was saved at `step` and metrics were flushed."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"received {signal.Signals(signum).name}; saved a checkpoint at update "
                     f"{step}; run the same command again to continue")
    self.step = step


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: try again later


class _SignalFlag:
  """Records SIGTERM / SIGINT instead of dying, while the training loop runs (main thread only)."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def _metrics_up_to(workdir: str, step: int) -> list[dict[str, Any]]:
  """Cuts metrics.jsonl back to rows with step <= `step` (rows written after the checkpoint)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  kept = [r for r in metrics.read(workdir) if r["step"] <= step]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in kept:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)
  return kept


def _open_checkpoints(config, workdir, strategy, state, log):
  """(checkpointer, state, start step) after resuming from WORKDIR/checkpoints if possible."""
  from pdist import checkpoint as ckpt_lib
  key = ckpt_lib.load_key(config.checkpoint.key_file)
  directory = os.path.join(workdir, "checkpoints")
  exists = os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))
  ckpt = ckpt_lib.Checkpointer(directory, keep=config.checkpoint.keep,
                               async_save=config.checkpoint.async_save, key=key, log=log)
  if config.checkpoint.restart == "fresh":
    if exists:
      log(f"pdist: restart=fresh: discarding the checkpoints in {directory}")
      ckpt.discard_all()
    return ckpt, state, 0
  found = ckpt.restore_latest(state, config.to_dict())
  if found is None:
    return ckpt, state, 0
  step, state, host = found
  strategy.load_host_state(host)
  log(f"pdist: resuming from the checkpoint at update {step}")
  return ckpt, state, step


def run(config, workdir: str | None = None) -> Result:
  """Trains `config` and writes its results to `workdir` (None: write nothing).

  With a workdir, an existing WORKDIR/checkpoints is resumed from (unless
  config.checkpoint.restart='fresh'); checkpoints are saved every config.checkpoint.every updates,
  at the end, and when SIGTERM / SIGINT arrives (then `Preempted` is raised).
  """
  config_lib.validate(config)
  is_writer = workdir is not None and jax.process_index() == 0
  log = (lambda msg: print(msg, file=sys.stderr)) if jax.process_index() == 0 else (lambda m: None)
  if is_writer:
    os.makedirs(workdir, exist_ok=True)

  dataset = data.load(config.data)
  task = tasks.build(config, dataset)
  strategy = strategies.build(config, task)
  state = strategy.init(jax.random.PRNGKey(config.train.seed))
  ckpt, start_step = None, 0
  if workdir is not None:
    ckpt, state, start_step = _open_checkpoints(config, workdir, strategy, state, log)
  if is_writer:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2, sort_keys=True) + "\n")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    had_rows = os.path.exists(metrics_path) and os.path.getsize(metrics_path) > 0
    previous = _metrics_up_to(workdir, start_step)
    if start_step == 0 and had_rows:
      log(f"pdist: no checkpoint in {workdir}; starting from update 0 and rewriting its metrics")
  else:
    previous = []

  writer = metrics.MetricsWriter(workdir, enabled=is_writer) if workdir else None
  steps, eval_every, every = config.train.steps, config.train.eval_every, config.checkpoint.every
  step = start_step
  bar = metrics.progress(steps, initial=step,
                         enabled=config.train.progress and jax.process_index() == 0)
  rows: list[dict[str, Any]] = []
  start = time.perf_counter()
  last_row: dict[str, Any] = previous[-1] if previous else {}
  try:
    with _SignalFlag() as stop:
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
        rows.append(row)
        if writer:
          writer.write(row)
        last_row = row
        if ckpt is not None and ((every and step % every == 0) or step == steps and every
                                 or stop.signum is not None):
          ckpt.save(step, state, strategy.host_state(), config.to_dict())
          log(f"pdist: checkpoint at update {step}")
        bar.update(n)
        bar.set_postfix(loss=f"{loss:.4g}", **({"acc": f"{row['eval_accuracy']:.3f}"}
                                               if "eval_accuracy" in row else {}))
        if stop.signum is not None and step < steps:
          if ckpt is None:
            raise KeyboardInterrupt
          ckpt.wait()
          raise Preempted(step, stop.signum)
  finally:
    bar.close()
    if writer:
      writer.close()
    if ckpt is not None:
      ckpt.close()
  wall = time.perf_counter() - start
  summary = {k: v for k, v in last_row.items() if k not in metrics.TIMING_FIELDS}
  done = steps - start_step
  summary.update(wall_seconds=wall, updates_per_sec=done / wall if wall > 0 and done else 0.0,
                 strategy=config.strategy, steps=steps, resumed_from=start_step)
  if is_writer:
    metrics.write_json(os.path.join(workdir, "summary.json"), summary)
    if config.train.save_params:
      save_params(os.path.join(workdir, "params.npz"), strategy.params(state))
  return Result(summary, state, strategy, rows)
