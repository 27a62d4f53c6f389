"""Tasks: what is learnt and how it is scored, on plain parameter pytrees.

A task gives `init(rng) -> params`, `loss(params, batch, rng) -> (loss, aux)` and
`evaluate(params) -> {"eval_loss": ..., ...}` over its held-out set. A batch is a dict of arrays
{"x", "y"} (None for the quadratic, which has no data). Strategies only ever see these three
functions and the training arrays, so every strategy trains every task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pdist import models
from pdist.data import Dataset

Params = Any
Batch = dict[str, jnp.ndarray] | None


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  init: Callable[[jax.Array], Params]
  loss: Callable[[Params, Batch, jax.Array], tuple[jnp.ndarray, dict]]
  evaluate: Callable[[Params], dict[str, float]]
  dataset: Dataset

  @property
  def has_data(self) -> bool:
    return self.dataset.x_train is not None


def classification_loss(apply_fn, params, batch, rng):
  """Mean softmax cross-entropy and accuracy of a batch."""
  del rng
  logits = apply_fn(params, batch["x"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
  accuracy = (jnp.argmax(logits, -1) == batch["y"]).mean()
  return loss, {"accuracy": accuracy}


def regression_loss(apply_fn, params, batch, rng):
  """Mean squared error."""
  del rng
  pred = apply_fn(params, batch["x"])
  return jnp.mean((pred - batch["y"]) ** 2), {}


def quadratic_loss(params, batch, rng):
  """The seed's loss: mean(theta^2) over all of theta's parts; its gradient is 2 theta / d."""
  del batch, rng
  parts = jax.tree.leaves(params)
  return sum(jnp.sum(p ** 2) for p in parts) / sum(p.size for p in parts), {}


def _evaluator(loss_fn, x: np.ndarray, y: np.ndarray, chunk: int = 2048):
  """Mean loss (and accuracy) over a held-out set, in jitted chunks of `chunk` examples."""
  x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
  n = len(x)

  @jax.jit
  def sums(params, xs, ys):
    loss, aux = loss_fn(params, {"x": xs, "y": ys}, None)
    count = xs.shape[0]
    return {"eval_loss": loss * count, **{f"eval_{k}": v * count for k, v in aux.items()}}

  def evaluate(params) -> dict[str, float]:
    total: dict[str, float] = {}
    for lo in range(0, n, chunk):
      part = jax.device_get(sums(params, x_dev[lo:lo + chunk], y_dev[lo:lo + chunk]))
      for k, v in part.items():
        total[k] = total.get(k, 0.0) + float(v)
    return {k: v / n for k, v in total.items()}

  return evaluate


def build(config, dataset: Dataset) -> Task:
  """The task for `config` on `dataset` (see pdist.data.load)."""
  if dataset.kind == "quadratic":
    dim, parts = config.data.dim, config.data.parts

    def init(rng):
      theta = jax.random.normal(rng, (dim,), jnp.float32)
      if parts == 1:
        return {"theta": theta}
      # the same draw, cut into parts (so every split has the same closed form)
      return {f"theta_{i}": p for i, p in enumerate(jnp.array_split(theta, parts))}

    def evaluate(params):
      return {"eval_loss": float(quadratic_loss(params, None, None)[0])}

    return Task("quadratic", jax.jit(init), quadratic_loss, evaluate, dataset)

  num_outputs = dataset.num_classes if dataset.kind == "classification" else dataset.y_train.shape[-1]
  module = models.build(config.model, num_outputs)
  sample = jnp.zeros((1,) + dataset.input_shape, jnp.float32)

  def init(rng):
    return module.init(rng, sample)["params"]

  def apply_fn(params, x):
    return module.apply({"params": params}, x)

  base = classification_loss if dataset.kind == "classification" else regression_loss

  def loss(params, batch, rng):
    return base(apply_fn, params, batch, rng)

  # jitted: Flax's init run op by op would compile dozens of small kernels
  return Task(dataset.kind, jax.jit(init), loss,
              _evaluator(loss, dataset.x_test, dataset.y_test), dataset)
