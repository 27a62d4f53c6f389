"""The strategy protocol and the pieces every strategy shares.

A strategy is the only thing that differs between training modes:

  init(rng) -> state            a pytree holding everything needed to continue exactly
  run(state, n) -> (state, m)   n more updates; m = host floats averaged over them
  params(state) -> params       the parameters to evaluate

Randomness is derived, never carried: the loss's rng for update t is fold_in(step_key, t), and the
batch of update t comes from pdist.data.batch_indices(seed, t, ...). So the state's step alone
restores the data position.

Metrics mean the same in every strategy: `loss` and the task's metrics (e.g. `accuracy`) in a
row are the mean over the gradients *applied* in that interval's updates, each at the parameters
it was computed on (for a bsp round: over all the workers' gradients of that round).
"""

from __future__ import annotations

import abc
import sys
from typing import Any

import jax
import jax.numpy as jnp

from pdist.tasks import Task

State = dict[str, Any]

# salt folded into an update's rng to give the gradient pipeline its own randomness
PIPELINE_SALT = 0x5EED


class Strategy(abc.ABC):
  """Base class: subclasses implement `init` and `run` and register themselves by name."""

  privacy = None   # the differential-privacy mechanism (privacy.DPSGD), when the run has one

  @abc.abstractmethod
  def init(self, rng: jax.Array) -> State:
    ...

  @abc.abstractmethod
  def run(self, state: State, num_updates: int) -> tuple[State, dict[str, float]]:
    ...

  def params(self, state: State) -> Any:
    return state["params"]

  def dispatch(self, state: State, num_updates: int,
               step: int | None = None) -> tuple[State, Any]:
    """Starts `num_updates` updates and returns (new state, a handle for `collect`) without
    waiting for the device, where the strategy can; the default runs them to the end.

    `step` is the state's update count when the caller knows it (the train loop does): reading
    it from the state instead would wait for the previous chunk to finish, and the device would
    idle while the host prepares the next one."""
    del step
    return self.run(state, num_updates)

  def collect(self, pending: Any) -> dict[str, float]:
    """The host metrics of a dispatched chunk (waits for it)."""
    return pending

  # Whether `dispatch` takes `segments`: one compiled call covering several log rows, each row
  # the mean over its own updates (train.run then sizes calls by time, not by log_every).
  segmented = False

  def collect_rows(self, pending: Any) -> list[dict[str, float]]:
    """The host metrics of each row of a dispatched call (one, unless it was segmented)."""
    return [self.collect(pending)]

  def evaluate(self, state: State) -> dict[str, float]:
    """The task's held-out metrics at this state's parameters."""
    return self.task.evaluate(self.params(state))

  def host_state(self) -> dict:
    """The JSON-able part of the state that lives on the host (none for most strategies)."""
    return {}

  def load_host_state(self, d: dict) -> None:
    del d

  def records(self) -> list[dict]:
    """Event records produced since the last call (train.run appends them to
    WORKDIR/trace.jsonl); none for most strategies."""
    return []

  def records_count(self) -> int:
    """How many records this run has produced in all (part of the host state, so a resumed run
    cuts trace.jsonl back to its checkpoint)."""
    return 0

  def start(self) -> None:
    """Starts what the strategy runs outside this process (train.run calls it after resuming,
    before the first update: a failure there comes before any progress output)."""

  def close(self) -> None:
    """Releases what the strategy started outside this process (train.run calls it last)."""

  def examples_per_update(self, config) -> int:
    """Training examples behind one update (for the `epoch` metric)."""
    return config.data.batch_size

  def step(self, state: State) -> int:
    return int(state["step"])

  def describe(self, state: State) -> dict:
    """Fields for summary.json beyond the last metrics row (e.g. the privacy guarantee)."""
    del state
    return {}

  def check_finished(self, state: State) -> None:
    """Called once the run's last update is logged: raise a TrainingError if the run, although
    it went through every update, did not train (e.g. every federated round failed)."""
    del state

  def public_row_keys(self) -> tuple[str, ...]:
    """Row fields that a private run may log: functions of the config and public randomness."""
    return ()

  def released(self, row: dict) -> dict:
    """`row` as it may be written or printed: under differential privacy without the
    statistics of private data that the guarantee does not cover (privacy.DPSGD.released)."""
    if self.privacy is None:
      return row
    return self.privacy.released(row, self.public_row_keys())


UNREACHED_FAILURES = "scripted_failures_not_reached"   # summary.json's field


def warn_unreached_failures(unreached: list, ended: str) -> None:
  """One line on stderr when config.ps.failures.at's scripted failures `unreached` ([time,
  worker], ...) never happened because the run ended first (`ended`: when it ended); summary.json
  lists them under UNREACHED_FAILURES."""
  if not unreached:
    return
  which = ", ".join(f"(time {t:g}, worker {w})" for t, w in unreached)
  print(f"pdist: warning: the run ended {ended}, before config.ps.failures.at's {which}, which "
        f"therefore never happened (summary.json: {UNREACHED_FAILURES}); more "
        "config.train.steps or earlier times make them happen", file=sys.stderr)


def init_keys(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(key for parameter init, key from which each update's rng is folded)."""
  return rng, jax.random.fold_in(rng, 1)


def grad_fn(task: Task, accumulate_steps: int = 1, compute=None):
  """params, batch, rng -> (grads, (loss, aux)). The one place gradients are taken.

  `compute` replaces the plain gradient of one (micro-)batch, e.g. by DP-SGD's clipped sum.

  With accumulate_steps = A > 1 the batch is cut into A equal micro-batches, processed one after
  another in a `lax.scan` (so only one micro-batch's activations are live), and the gradients,
  losses and metrics are averaged: the mean over A micro-batches of b equals the gradient of the
  whole batch of A*b, up to float rounding, at a fraction of the memory.
  """
  if compute is None:
    value_and_grad = jax.value_and_grad(task.loss, has_aux=True)

    def compute(params, batch, rng):
      (loss, aux), grads = value_and_grad(params, batch, rng)
      return grads, (loss, aux)

  if accumulate_steps == 1:
    return compute

  def accumulated(params, batch, rng):
    micro = jax.tree.map(
        lambda v: v.reshape((accumulate_steps, v.shape[0] // accumulate_steps) + v.shape[1:]),
        batch)

    def body(grad_sum, i_and_batch):
      i, mb = i_and_batch
      grads, (loss, aux) = compute(params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, grad_sum, grads), (loss, aux)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grad_sum, (losses, auxes) = jax.lax.scan(
        body, zeros, (jnp.arange(accumulate_steps), micro), length=accumulate_steps)
    grads = jax.tree.map(lambda g: g / accumulate_steps, grad_sum)
    return grads, (losses.mean(), jax.tree.map(jnp.mean, auxes))

  return accumulated


def gather_batch(data: dict[str, jax.Array] | None, idx) -> dict[str, jax.Array] | None:
  """The batch at indices `idx` of device-resident training arrays (None for data-free tasks).

  `idx` may also be {"idx": indices, "mask": weights} (padded batches): the mask joins the batch.
  """
  if data is None:
    return None
  if isinstance(idx, dict):
    return {**gather_batch(data, idx["idx"]), "mask": idx["mask"]}
  return {k: jnp.take(v, idx, axis=0) for k, v in data.items()}


def training_arrays(task: Task) -> dict | None:
  """The training set as a dict of host arrays (None for data-free tasks)."""
  if not task.has_data:
    return None
  return {"x": task.dataset.x_train, "y": task.dataset.y_train}


def mean_metrics(per_step: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return {k: jnp.mean(v) for k, v in per_step.items()}


def row_segments(num_updates: int, segments=None) -> tuple[int, ...]:
  """The row lengths of a call of `num_updates` updates (one row by default), checked."""
  segments = (num_updates,) if segments is None else tuple(int(n) for n in segments)
  if sum(segments) != num_updates or min(segments) < 1:
    raise ValueError(f"rows of {segments} updates do not make a call of {num_updates}")
  return segments


def segment_means(per_step: dict[str, jax.Array], segments) -> list[dict[str, jax.Array]]:
  """The per-update metrics of one call as one mean per row: row i averages the `segments[i]`
  updates after those of the rows before it (static lengths)."""
  out, start = [], 0
  for n in segments:
    out.append({k: jnp.mean(v[start:start + n]) for k, v in per_step.items()})
    start += n
  return out


def to_host(metrics: dict[str, jax.Array]) -> dict[str, float]:
  """Device scalars -> Python floats (one transfer)."""
  return {k: float(v) for k, v in jax.device_get(metrics).items()}
