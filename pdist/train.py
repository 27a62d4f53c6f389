"""train.run(config, workdir): the outer loop every strategy shares.

Four steps: prepare (dataset, task, strategy, initial state), resume (newest checkpoint, metrics
cut back to it), loop (updates a log interval at a time, evaluation, metrics rows, checkpoints,
progress, signals) and finish (summary.json, params). Strategies never write files.
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
import numpy as np
import jax.numpy as jnp

from pdist import config as config_lib
from pdist import artifacts, data, memory, metrics, strategies, tasks
from pdist import workdir as workdir_lib
from pdist.errors import TrainingError


class Diverged(TrainingError):
  """The training loss became non-finite by update `step`; `summary` is what summary.json holds."""

  def __init__(self, step: int, loss: float, learning_rate: float):
    super().__init__(f"the training loss became {loss} by update {step}; lower "
                     f"config.optim.learning_rate (now {learning_rate}) or set "
                     "config.optim.grad_clip")
    self.step = step
    self.summary: dict[str, Any] = {}


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
  """SIGTERM or SIGINT arrived; a checkpoint was saved at `step` and metrics were flushed (or,
  before the first update, there was nothing new to save)."""

  def __init__(self, step: int, signum: int, saved: bool = True):
    where = (f"saved a checkpoint at update {step}" if saved else
             f"it came before the first update, so nothing new was saved (the run is at update "
             f"{step})")
    super().__init__(f"received {signal.Signals(signum).name}; {where}; run the same command "
                     "again to continue")
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
  _replace_lines(path, [json.dumps(r) + "\n" for r in kept])
  return kept


def _replace_lines(path: str, lines: list[str]) -> None:
  """Rewrites the file at `path` with `lines`, atomically (a temporary file, then a rename)."""
  with open(path + ".tmp", "w") as f:
    f.writelines(lines)
  os.replace(path + ".tmp", path)


TRACE = "trace.jsonl"


def _trace_up_to(workdir: str, count: int, log) -> None:
  """Cuts WORKDIR/trace.jsonl (a strategy's event records) back to the first `count` records,
  those the resumed state has seen."""
  path = os.path.join(workdir, TRACE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  if len(lines) < count:
    log(f"pdist: {path} has {len(lines)} records but the checkpoint saw {count}; the trace "
        "cannot be replayed past its end")
  _replace_lines(path, lines[:count])


def _write_records(r) -> None:
  records = r.strategy.records()
  if records and r.is_writer:
    with open(os.path.join(r.workdir, TRACE), "a") as f:
      for rec in records:
        f.write(json.dumps(rec) + "\n")


def _open_checkpoints(config, workdir, strategy, state, log):
  """(checkpointer, state, start step) after resuming from WORKDIR/checkpoints if possible."""
  from pdist import checkpoint as ckpt_lib
  key = ckpt_lib.load_key(config.checkpoint.key_file)
  directory = os.path.join(workdir, "checkpoints")
  exists = os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))
  ckpt = ckpt_lib.Checkpointer(directory, keep=config.checkpoint.keep,
                               async_save=config.checkpoint.async_save, key=key, log=log,
                               background=config.checkpoint.async_save
                               and jax.process_count() == 1)
  if config.checkpoint.restart == "fresh":
    if exists:
      log(f"pdist: restart=fresh: discarding the checkpoints in {directory}")
      ckpt.discard_all()
    return ckpt, state, 0
  found = ckpt.restore_latest(state, config.to_dict(), config_lib.base_config().to_dict())
  if found is None:
    return ckpt, state, 0
  step, state, host = found
  strategy.load_host_state(host)
  log(f"pdist: resuming from the checkpoint at update {step}")
  return ckpt, state, step


@dataclasses.dataclass
class _Run:
  """Everything one call of `run` works with, from prepare to finish."""
  config: Any
  workdir: str | None
  is_writer: bool
  log: Any
  dataset: Any
  task: tasks.Task
  strategy: strategies.Strategy
  state: Any
  ckpt: Any = None
  start_step: int = 0
  step: int = 0
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  last_row: dict[str, Any] = dataclasses.field(default_factory=dict)
  writer: Any = None
  started: float = 0.0
  lock: Any = None
  finished: dict[str, Any] | None = None  # the summary of a run found already finished
  command: list[str] | None = None
  updates_per_call_used: int = 0  # the most updates one compiled call covered


def _prepare(config, workdir: str | None, pipeline=None) -> _Run:
  """Validates the config and builds the data, task, strategy and initial state."""
  config_lib.validate(config)
  lead = jax.process_index() == 0
  is_writer = workdir is not None and lead
  log = (lambda msg: print(msg, file=sys.stderr)) if lead else (lambda msg: None)
  lock = None
  if is_writer:
    workdir_lib.prepare(workdir)
    lock = workdir_lib.Lock(workdir).acquire()
  try:
    return _build(config, workdir, is_writer, log, pipeline, lock)
  except BaseException:
    if lock is not None:
      lock.release()
    raise


def _build(config, workdir, is_writer, log, pipeline, lock) -> _Run:
  dataset = data.load(config.data)
  teacher = artifacts.load_teacher(config, dataset) if config.distill.teacher else None
  task = tasks.build(config, dataset, teacher)
  memory.check(config, task)   # a state that cannot fit: one sentence, before any allocation
  strategy = strategies.build(config, task, pipeline=pipeline)
  _check_updates_per_call(config, strategy)
  state = strategy.init(jax.random.PRNGKey(config.train.seed))
  return _Run(config, workdir, is_writer, log, dataset, task, strategy, state, lock=lock)


def _resume(r: _Run) -> None:
  """Restores the newest checkpoint (if any) and cuts metrics.jsonl back to its step."""
  if r.workdir is None:
    return
  r.ckpt, r.state, r.start_step = _open_checkpoints(r.config, r.workdir, r.strategy, r.state,
                                                    r.log)
  r.step = r.start_step
  if r.is_writer:
    _resume_writer(r)
  if jax.process_count() > 1:
    # every process must agree whether the run is already finished: _finish may run collectives
    # (a gossip run's parameters are its replicas' mean), which all processes must join
    from jax.experimental import multihost_utils
    done = multihost_utils.broadcast_one_to_all(np.int32(r.finished is not None))
    if int(done) and r.finished is None:
      r.finished = {}   # process 0 holds the finished run's summary; this one writes nothing


def _resume_writer(r: _Run) -> None:
  """Process 0's part of a resume: config.json, metrics and traces cut back to the checkpoint."""
  with open(os.path.join(r.workdir, "config.json"), "w") as f:
    f.write(r.config.to_json(indent=2, sort_keys=True) + "\n")
  metrics_path = os.path.join(r.workdir, "metrics.jsonl")
  had_rows = os.path.exists(metrics_path) and os.path.getsize(metrics_path) > 0
  previous = _metrics_up_to(r.workdir, r.start_step)
  # TensorBoard's events likewise, so that the steps written again appear once
  _write(metrics.tensorboard_up_to, os.path.join(r.workdir, metrics.TENSORBOARD), r.start_step)
  if r.start_step == 0 and had_rows:
    r.log(f"pdist: no checkpoint in {r.workdir}; starting from update 0 and rewriting its metrics")
  if r.start_step > 0 and (not previous or previous[-1]["step"] != r.start_step):
    r.log(f"pdist: {metrics_path} has no row for update {r.start_step} (removed or cut short); "
          "rows from here on are written, earlier ones are not recovered")
  r.last_row = previous[-1] if previous else {}
  _trace_up_to(r.workdir, r.strategy.records_count(), r.log)
  if r.start_step >= r.config.train.steps:
    path = os.path.join(r.workdir, "summary.json")
    r.finished = metrics.read_json(path) if os.path.exists(path) else None
    r.log(f"pdist: {r.workdir} already holds a finished run ({r.start_step} of "
          f"{r.config.train.steps} updates); nothing to do (--config.checkpoint.restart=fresh "
          "runs it again)")


def _row(r: _Run, chunk: dict[str, float], n: int, elapsed: float, step: int,
         with_state: bool, wall_time: float | None = None) -> dict[str, Any]:
  """The metrics row after update `step` (evaluating when due, which needs `with_state`: the
  current state is that of `step`); raises Diverged if the loss is not finite."""
  config = r.config
  loss = chunk.get("loss", float("nan"))
  if not math.isfinite(loss):
    raise Diverged(step, loss, config.optim.learning_rate)
  row = {"step": step, **chunk}
  if r.dataset.num_train:
    row["epoch"] = step * r.strategy.examples_per_update(config) / r.dataset.num_train
  eval_every = config.train.eval_every
  if with_state and ((eval_every and step % eval_every == 0) or step == config.train.steps):
    row.update(r.strategy.evaluate(r.state))
  row["steps_per_sec"] = n / elapsed
  row["wall_time"] = time.perf_counter() - r.started if wall_time is None else wall_time
  return row


def _state_stop(r: _Run, step: int) -> bool:
  """Whether the config needs the state right after `step`: to evaluate, to checkpoint, or at
  the end (the stops known before the run)."""
  config, every = r.config, r.config.checkpoint.every
  return bool(step == config.train.steps
              or (config.train.eval_every and step % config.train.eval_every == 0)
              or (r.ckpt is not None and every and step % every == 0))


def _needs_state(r: _Run, step: int, stop) -> bool:
  """Whether the state right after `step` is needed before the next chunk is queued: at a
  state stop of the config, or on a signal."""
  return _state_stop(r, step) or stop.signum is not None


# A compiled call that runs shorter than this pays a visible share of per-call host work (the
# dispatch, the row, the bar): the loop then lets one call cover several log rows (a power of
# two of them, so a call then runs about half to once this long).
CALL_SECONDS = 0.05
# ... when the rest of the run is at least this long, so that the calls of more rows (each a new
# program to compile) pay for themselves.
GROUP_MIN_SECONDS = 2.0
MAX_ROWS_PER_CALL = 64


class _CallSize:
  """How many log rows one compiled call may cover (a power of two): `train.updates_per_call`
  updates' worth when set, else, on an accelerator, decided once from the second call's time
  (the first compiles). Only for strategies whose `dispatch` takes row segments; one row a call
  for the others. Not by default on CPU hosts: there a call's fixed cost is small next to its
  updates and grouping measured no faster (benchmarks/README.md, the floors), while each call
  size is one more program to compile."""

  def __init__(self, config, segmented: bool):
    fixed = config.train.updates_per_call
    self.rows = 1
    # with several processes every one must compile the same calls: a size measured by each
    # process could differ between them (and their collectives then no longer match)
    self.decided = (not segmented or jax.default_backend() == "cpu"
                    or jax.process_count() > 1)
    self.calls = 0
    self.note = None   # what a fixed updates_per_call became, when not exactly that
    if segmented and fixed:
      self.rows = _pow2_floor(min(MAX_ROWS_PER_CALL, max(1, fixed // config.train.log_every)))
      self.decided = True
      covers = self.rows * config.train.log_every
      if covers != fixed:
        self.note = (f"pdist: config.train.updates_per_call={fixed}: a compiled call covers "
                     f"whole log rows, a power of two of them and at most {MAX_ROWS_PER_CALL}: "
                     f"{self.rows} row(s) of {config.train.log_every} updates ({covers} "
                     "updates), fewer before "
                     "an evaluation, a checkpoint or the end (summary.json: "
                     "updates_per_call_used)")

  def observe(self, updates: int, seconds: float, remaining: int) -> None:
    if self.decided:
      return
    self.calls += 1
    if self.calls < 2 or seconds <= 0:
      return
    self.decided = True
    if seconds < CALL_SECONDS and remaining * seconds / updates >= GROUP_MIN_SECONDS:
      self.rows = _pow2_floor(min(MAX_ROWS_PER_CALL, int(CALL_SECONDS / seconds)))

  def plan(self, r: _Run) -> list[int]:
    """The row lengths of the next call: up to `rows` log rows, ending early at a stop that
    needs the state (evaluation, checkpoint, the end); a call cut short covers the largest
    power of two of its rows, so few distinct programs are compiled. A signal is not looked at
    here (the loop saves at the end of the call in flight): the calls are the same in every
    process of a group whenever a signal reaches each."""
    segments, s = [], r.step
    while True:
      nxt = _next_stop(s, r.config)
      segments.append(nxt - s)
      s = nxt
      if len(segments) >= self.rows or _state_stop(r, s):
        break
    return segments[:_pow2_floor(len(segments))]


def _check_updates_per_call(config, strategy) -> None:
  """A set train.updates_per_call that the strategy cannot use (it runs one log row a call)
  is refused rather than ignored."""
  fixed = config.train.updates_per_call
  if not fixed or strategy.segmented:
    return
  what = (f"config.train.seeds={config.train.seeds}" if config.train.seeds > 1 else
          f"config.strategy='{config.strategy}'" + (
              f" with config.sync.backend='{config.sync.backend}'"
              if config.strategy == "sync" else ""))
  raise config_lib.ConfigError(
      f"config.train.updates_per_call={fixed} cannot take effect: {what} runs one log row a "
      "compiled call (only 'single' and 'sync' with shard_map cover several); leave it at 0")


def _pow2_floor(n: int) -> int:
  return 1 << (max(1, n).bit_length() - 1)


def _loop(r: _Run, stop) -> None:
  """Runs updates up to the next log / eval / checkpoint stop until train.steps, writing a row and
  saving checkpoints at each stop; SIGTERM / SIGINT save a checkpoint and raise Preempted.

  The device never waits for the host between plain log rows: the next chunk is queued before
  the previous chunk's metrics are read and written (one chunk in flight at most). Where the state
  itself is needed (evaluation, checkpoint, the end, a signal) the loop waits for it first. A
  call may cover several log rows (`_CallSize`): the rows are the same, each the mean over its
  own updates, and the parameters are bit for bit those of one row a call.
  """
  config, steps, every = r.config, r.config.train.steps, r.config.checkpoint.every
  bar = metrics.progress(steps, initial=r.step,
                         enabled=config.train.progress and jax.process_index() == 0)
  r.started = time.perf_counter()
  last = [time.perf_counter()]

  size = _CallSize(config, r.strategy.segmented)
  if size.note:
    r.log(size.note)

  def finish(pending, segments: list[int], start: int, with_state: bool) -> None:
    chunks = r.strategy.collect_rows(pending)
    _write_records(r)
    now = time.perf_counter()
    total, elapsed = sum(segments), now - last[0]
    step, t = start, last[0]
    for i, (chunk, n) in enumerate(zip(chunks, segments)):
      # rows inside one call share its time, in proportion to their updates
      step, t = step + n, t + elapsed * n / total
      last_row = i == len(segments) - 1  # its wall_time is read after its evaluation
      row = _row(r, chunk, n, elapsed * n / total, step, with_state and last_row,
                 wall_time=None if last_row else t - r.started)
      r.rows.append(row)
      if r.writer:
        r.writer.write(r.strategy.released(row))
      r.last_row = row
      bar.update(n)
    last[0] = now
    row = r.strategy.released(r.last_row)
    bar.set_postfix(refresh=False, **({"loss": f"{row['loss']:.4g}"} if "loss" in row else {}),
                    **({"acc": f"{row['eval_accuracy']:.3f}"} if "eval_accuracy" in row else {}))
    size.observe(total, elapsed, steps - r.step)
    r.updates_per_call_used = max(r.updates_per_call_used, total)

  def save(step, state, host) -> None:
    if r.ckpt.background:
      # saved by a worker thread while the next chunks run: from a device-side copy, since the
      # next chunk donates r.state's buffers
      state = jax.tree.map(jnp.copy, state)
    if r.writer:
      r.writer.flush()   # the TensorBoard events up to the checkpoint survive a later kill
    r.ckpt.save(step, state, host, config.to_dict(),
                on_saved=lambda s: r.log(f"pdist: checkpoint at update {s}"))

  in_flight = None  # (pending, segments, start) of a queued call whose rows are not written yet
  try:
    while r.step < steps:
      segments = size.plan(r)
      n, start = sum(segments), r.step
      if r.strategy.segmented:
        r.state, pending = r.strategy.dispatch(r.state, n, step=start, segments=segments)
      else:
        r.state, pending = r.strategy.dispatch(r.state, n, step=start)
      r.step += n
      if in_flight is not None:  # the previous chunk's rows, while this one runs
        finish(*in_flight, with_state=False)
        in_flight = None
      if not _needs_state(r, r.step, stop):
        in_flight = (pending, segments, start)
        continue
      finish(pending, segments, start, with_state=True)
      if r.ckpt is not None and ((every and r.step % every == 0) or r.step == steps and every
                                 or stop.signum is not None):
        save(r.step, r.state, r.strategy.host_state())
      if stop.signum is not None and r.step < steps:
        if r.ckpt is None:
          raise KeyboardInterrupt
        r.ckpt.wait()
        raise Preempted(r.step, stop.signum)
    if in_flight is not None:
      finish(*in_flight, with_state=False)
  finally:
    bar.close()


def _close_checkpoints(r: _Run) -> None:
  """Closes the checkpointer; while another exception is on its way out (Diverged, Preempted, an
  interrupt), a failing last save is reported in one line rather than replacing it."""
  if sys.exc_info()[1] is None:
    r.ckpt.close()
    return
  try:
    r.ckpt.close()
  except Exception as e:  # noqa: BLE001 -- the exception in flight is the one to report
    r.log(f"pdist: the last checkpoint could not be written: {e}")


def _output_failed(r: _Run, error) -> dict[str, Any]:
  """summary.json of a run stopped because a file could not be written: `status: stopped`, why,
  and `last_checkpoint`, the newest checkpoint known to be committed (where a resume starts;
  None if none). Sets `error.last_checkpoint`. Best effort: {} if summary.json cannot be written
  either (the error in flight is the one to report)."""
  saved = None
  if r.ckpt is not None:
    try:
      r.ckpt.wait()   # a save still being written counts once it is committed
    except Exception:  # noqa: BLE001 -- a second write failure: the first one is reported
      pass
    saved = r.ckpt.last_saved
  error.last_checkpoint = saved if saved is not None else (r.start_step or None)
  try:
    return _summary(r, "stopped", stopped_because=str(error),
                    last_checkpoint=error.last_checkpoint)
  except workdir_lib.OutputError:
    return {}


def _summary(r: _Run, status: str, **extra) -> dict[str, Any]:
  wall = time.perf_counter() - r.started
  done = r.step - r.start_step
  summary = {k: v for k, v in r.strategy.released(r.last_row).items()
             if k not in metrics.TIMING_FIELDS}
  summary.update(wall_seconds=wall, updates_per_sec=done / wall if wall > 0 and done else 0.0,
                 strategy=r.config.strategy, steps=r.config.train.steps,
                 resumed_from=r.start_step, status=status, **extra,
                 **r.strategy.describe(r.state))
  if r.config.train.updates_per_call:   # what the field became (_CallSize's note)
    summary["updates_per_call_used"] = r.updates_per_call_used
  # the task's statistics may read the training data (e.g. a text's unigram entropy): not under DP
  if (r.task.describe is not None and r.config.train.seeds == 1
      and r.strategy.privacy is None):
    summary.update(r.task.describe(r.strategy.params(r.state)))
  if r.is_writer:
    summary["provenance"] = workdir_lib.provenance(r.command)
    _write(metrics.write_json, os.path.join(r.workdir, "summary.json"), summary)
  return summary


def _write(fn, path, *args):
  """fn(path, *args); a failed write (disk full, read-only) is an OutputError naming the path."""
  try:
    return fn(path, *args)
  except OSError as e:
    raise workdir_lib.OutputError(path, e) from None


def _finish(r: _Run) -> Result:
  """Writes summary.json (and params.npz if asked) and returns the Result. A run that was
  already finished keeps its summary.json as it was."""
  if r.finished is not None:
    return Result(r.finished, r.state, r.strategy, r.rows)
  summary = _summary(r, "completed")
  if r.config.train.save_params:
    params = r.strategy.params(r.state)   # on every process: it may run a collective (gossip)
    if r.is_writer:
      _write(save_params, os.path.join(r.workdir, "params.npz"), params)
  return Result(summary, r.state, r.strategy, r.rows)


def run(config, workdir: str | None = None, pipeline=None,
        command: list[str] | None = None) -> Result:
  """Trains `config` and writes its results to `workdir` (None: write nothing).

  With a workdir, an existing WORKDIR/checkpoints is resumed from (unless
  config.checkpoint.restart='fresh'); checkpoints are saved every config.checkpoint.every updates,
  at the end, and when SIGTERM / SIGINT arrives (then `Preempted` is raised). The workdir is
  locked for the run's life. If the loss becomes non-finite, summary.json records
  `status: diverged` and `Diverged` is raised. `pipeline` replaces the gradient pipeline that the
  config builds (for experiments and tests); `command` is recorded in summary.json's provenance.
  """
  with _SignalFlag() as stop, memory.reported():   # XLA's RESOURCE_EXHAUSTED: one sentence
    r = _prepare(config, workdir, pipeline)
    r.command = command
    try:
      _resume(r)
      if stop.signum is not None:  # before the first update: nothing new to save
        if workdir is None:
          raise KeyboardInterrupt
        raise Preempted(r.start_step, stop.signum, saved=False)
      if workdir:
        r.writer = metrics.MetricsWriter(
            workdir, enabled=r.is_writer and r.finished is None,
            tensorboard=config.train.tensorboard, config_json=config.to_json(indent=2))
      try:
        if r.finished is None:
          r.strategy.start()
        _loop(r, stop)
        if r.ckpt is not None:
          r.ckpt.wait()   # a background save's failure surfaces here, as an OutputError
        if r.finished is None:
          r.strategy.check_finished(r.state)
      except Diverged as e:
        e.summary = _summary(r, "diverged", diverged_at=e.step)
        raise
      except TrainingError as e:   # e.g. every federated round failed: summary.json says so
        e.summary = _summary(r, "stopped", stopped_because=str(e))
        raise
      except OSError as e:  # metrics or checkpoints could not be written: summary.json says so
        error = workdir_lib.OutputError(getattr(e, "filename", None) or str(workdir), e)
        error.summary = _output_failed(r, error)
        raise error from None
      finally:
        if r.writer:
          r.writer.close()
        if r.ckpt is not None:
          _close_checkpoints(r)
      return _finish(r)
    finally:
      r.strategy.close()
      if r.lock is not None:
        r.lock.release()
