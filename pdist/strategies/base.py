"""The strategy protocol and the pieces every strategy shares.

A strategy is the only thing that differs between training modes:

  init(rng) -> state            a pytree holding everything needed to continue exactly
  run(state, n) -> (state, m)   n more updates; m = host floats averaged over them
  params(state) -> params       the parameters to evaluate

Randomness is derived, never carried: the loss's rng for update t is fold_in(step_key, t), and the
batch of update t comes from pdist.data.batch_indices(seed, t, ...). So the state's step alone
restores the data position.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import optax

from pdist.tasks import Task

State = dict[str, Any]


class Strategy(abc.ABC):
  """Base class: subclasses implement `init` and `run`."""

  name: str = "strategy"

  @abc.abstractmethod
  def init(self, rng: jax.Array) -> State:
    ...

  @abc.abstractmethod
  def run(self, state: State, num_updates: int) -> tuple[State, dict[str, float]]:
    ...

  def params(self, state: State) -> Any:
    return state["params"]

  def step(self, state: State) -> int:
    return int(state["step"])


def init_keys(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(key for parameter init, key from which each update's rng is folded)."""
  return rng, jax.random.fold_in(rng, 1)


def grad_fn(task: Task):
  """params, batch, rng -> (grads, (loss, aux)). The one place gradients are taken."""
  value_and_grad = jax.value_and_grad(task.loss, has_aux=True)

  def compute(params, batch, rng):
    (loss, aux), grads = value_and_grad(params, batch, rng)
    return grads, (loss, aux)

  return compute


def apply_gradient(tx: optax.GradientTransformation, params, opt_state, grads):
  """theta <- optimizer(theta, grad): one optax update."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def gather_batch(data: dict[str, jax.Array] | None, idx) -> dict[str, jax.Array] | None:
  """The batch at indices `idx` of device-resident training arrays (None for data-free tasks)."""
  if data is None:
    return None
  return {k: jnp.take(v, idx, axis=0) for k, v in data.items()}


def mean_metrics(per_step: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return {k: jnp.mean(v) for k, v in per_step.items()}
