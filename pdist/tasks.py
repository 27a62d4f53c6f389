"""Tasks: what is learnt and how it is scored, on plain parameter pytrees.

A task gives
  init(rng) -> params
  apply(params, inputs) -> outputs                 the model's forward function (None: no model)
  per_example_loss(params, batch, rng) -> (losses [B], metrics {name: [B]})
  loss(params, batch, rng) -> (loss, metrics)      means over the batch
  evaluate(params) -> {"eval_loss": ..., ...}      over the held-out set
A batch is a dict of arrays {"x", "y"} and optionally "mask" (None for the quadratic, which has no
data). With a mask, `loss` is the mask-weighted mean, so a padded or Poisson-sampled batch gives
the exact mean over its real examples; without one it is the plain mean. Strategies only ever see
these functions and the training arrays, so every strategy trains every task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pdist import distill, models
from pdist.data import Dataset
from pdist.models.int8 import fake_quantize

Params = Any
Batch = dict[str, jnp.ndarray] | None
PerExample = Callable[[Params, Batch, jax.Array], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  init: Callable[[jax.Array], Params]
  loss: Callable[[Params, Batch, jax.Array], tuple[jnp.ndarray, dict]]
  evaluate: Callable[[Params], dict[str, float]]
  dataset: Dataset
  apply: Callable[[Params, jnp.ndarray], jnp.ndarray] | None = None
  per_example_loss: PerExample | None = None
  describe: Callable[[Params], dict] | None = None   # extra summary.json fields at the end
  teacher: "Teacher | None" = None   # the distillation teacher the loss was built with
  # (loss, per_example_loss) of the same task computed by another apply(params, x): pipeline
  # parallelism runs the model's layers as stages (pdist/parallel/stages.py)
  losses_for: Callable[[Callable], tuple[Callable, PerExample]] | None = None
  module: Any = None   # the Flax module (None for the quadratic)

  @property
  def has_data(self) -> bool:
    return self.dataset.x_train is not None


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A finished run that a student distils from (config.distill): the run's config and its final
  parameters (numpy arrays, so that a teacher travels to Ray workers). Read from a workdir by
  `artifacts.load_teacher`."""
  config: Any
  params: Params


def batch_mean(per_example: PerExample):
  """loss(params, batch, rng) from a per-example loss: the (mask-weighted) mean of each value."""
  def loss(params, batch, rng):
    losses, metrics = per_example(params, batch, rng)
    mask = batch.get("mask")
    if mask is None:
      return losses.mean(), {k: v.mean() for k, v in metrics.items()}
    mask = mask.astype(losses.dtype)
    total = jnp.maximum(mask.sum(), 1.0)
    return ((losses * mask).sum() / total,
            {k: (v.astype(losses.dtype) * mask).sum() / total for k, v in metrics.items()})
  return loss


def classification_scores(logits, y):
  """Per-example softmax cross-entropy and correctness (1.0 / 0.0)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return losses, {"accuracy": (jnp.argmax(logits, -1) == y).astype(jnp.float32)}


def language_scores(logits, y):
  """Per-sequence mean next-token cross-entropy (nats per token), accuracy and bits per byte."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(axis=-1)
  correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32).mean(axis=-1)
  return losses, {"accuracy": correct, "bits_per_char": losses / np.log(2.0)}


def classification_loss(apply_fn, params, batch, rng):
  del rng
  return classification_scores(apply_fn(params, batch["x"]), batch["y"])


def language_loss(apply_fn, params, batch, rng):
  del rng
  return language_scores(apply_fn(params, batch["x"]), batch["y"])


def regression_loss(apply_fn, params, batch, rng):
  """Per-example squared error (summed over the output dimensions' mean)."""
  del rng
  pred = apply_fn(params, batch["x"])
  return jnp.mean((pred - batch["y"]) ** 2, axis=tuple(range(1, pred.ndim))), {}


def quadratic_loss(params, batch, rng):
  """The seed's loss: mean(theta^2) over all of theta's parts; its gradient is 2 theta / d."""
  del batch, rng
  parts = jax.tree.leaves(params)
  return sum(jnp.sum(p ** 2) for p in parts) / sum(p.size for p in parts), {}


def _evaluator(loss_fn, x: np.ndarray, y: np.ndarray, chunk: int = 2048):
  if x.ndim == 2 and np.issubdtype(x.dtype, np.integer):   # token windows: [chunk, T, vocab] logits
    chunk = max(1, 8192 // x.shape[1])
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


def _quadratic_task(config, dataset: Dataset) -> Task:
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


def build(config, dataset: Dataset, teacher: Teacher | None = None) -> Task:
  """The task for `config` on `dataset` (see pdist.data.load).

  With config.distill.teacher set, the training loss mixes in `teacher`'s soft targets
  (distill.py); without a `teacher` the task is the plain one (enough to evaluate a finished run).
  Training entry points pass `artifacts.load_teacher(config, dataset)`.
  """
  if dataset.kind == "quadratic":
    return _quadratic_task(config, dataset)
  classification = dataset.kind in ("classification", "language")
  num_outputs = dataset.num_classes if classification else dataset.y_train.shape[-1]
  inputs = models.ModelInputs(num_outputs, dataset.input_shape, dataset.input_dtype,
                              dataset.vocab_size)
  module = models.build(config.model, inputs)
  sample = jnp.zeros((1,) + dataset.input_shape, dataset.input_dtype)

  def init(rng):
    return module.init(rng, sample)["params"]

  def apply_fn(params, x):
    if config.model.qat:   # quantisation-aware: the forward pass sees int8 weights (models/int8.py)
      params = fake_quantize(params, config.model.qat_bits)
    return module.apply({"params": params}, x)

  scored = {"classification": classification_loss, "language": language_loss}.get(
      dataset.kind, regression_loss)

  def losses_for(apply):
    """(training loss, per-example loss) through `apply`: labels, and with config.distill the
    teacher's soft targets (distill.py)."""
    def per_example_loss(params, batch, rng):
      return scored(apply, params, batch, rng)
    if config.distill.teacher and teacher is not None:
      per_example_loss = _distilled(config, dataset, apply, teacher)
    return batch_mean(per_example_loss), per_example_loss

  plain = batch_mean(lambda params, batch, rng: scored(apply_fn, params, batch, rng))

  evaluate = _evaluator(plain, dataset.x_test, dataset.y_test)
  on_train = _evaluator(plain, dataset.x_train, dataset.y_train)
  loss, per_example_loss = losses_for(apply_fn)
  optimum = None
  if dataset.kind == "regression" and config.model.name == "linear":
    optimum = least_squares_optimum(dataset.x_train, dataset.y_train)

  def evaluate_all(params) -> dict[str, float]:
    out = evaluate(params)
    if config.train.eval_train or optimum is not None:
      train_metrics = on_train(params)
      out.update({k.replace("eval_", "train_eval_"): v for k, v in train_metrics.items()})
      if optimum is not None:
        out["excess_loss"] = train_metrics["eval_loss"] - optimum
    if dataset.kind == "language":
      out["eval_perplexity"] = float(np.exp(out["eval_loss"]))
    return out

  describe = None
  if dataset.kind == "language":
    describe = _language_describe(apply_fn, dataset)

  # jitted: Flax's init run op by op would compile dozens of small kernels
  return Task(dataset.kind, jax.jit(init), loss, evaluate_all, dataset, apply=apply_fn,
              per_example_loss=per_example_loss, describe=describe,
              teacher=teacher if config.distill.teacher else None, losses_for=losses_for,
              module=module)


def _language_describe(apply_fn, dataset, length: int = 300, temperature: float = 0.8):
  """summary.json's view of a language model: the unigram baseline and a sample of generated
  text (temperature 0.8, a fixed key) continuing the first validation window."""
  from pdist.data import text
  prompt = jnp.asarray(dataset.x_test[0])

  @jax.jit
  def generate(params):
    def step(window, key):
      logits = apply_fn(params, window[None])[0, -1] / temperature
      token = jax.random.categorical(key, logits).astype(window.dtype)
      return jnp.concatenate([window[1:], token[None]]), token
    _, tokens = jax.lax.scan(step, prompt, jax.random.split(jax.random.PRNGKey(0), length))
    return tokens

  def describe(params) -> dict:
    return {"unigram_bits_per_char": text.unigram_bits(dataset),
            "prompt": text.decode(np.asarray(prompt)[-80:]),
            "sample": text.decode(np.asarray(generate(params)))}

  return describe


def _distilled(config, dataset, apply_fn, teacher: Teacher) -> PerExample:
  """(1 - w) CE(labels) + w T^2 KL(teacher || student), per example (see distill.py)."""
  teacher_task = build(teacher.config, dataset)
  teacher_apply = teacher_task.apply
  abstract = jax.eval_shape(teacher_task.init, jax.random.PRNGKey(0))
  teacher_params = jax.tree.map(lambda v, a: jnp.asarray(v, a.dtype), teacher.params, abstract)
  temperature, weight = float(config.distill.temperature), float(config.distill.weight)
  scores = language_scores if dataset.kind == "language" else classification_scores

  def per_example(params, batch, rng):
    del rng
    logits = apply_fn(params, batch["x"])
    hard, metrics = scores(logits, batch["y"])
    soft = distill.soft_loss(logits, teacher_apply(teacher_params, batch["x"]), temperature)
    if soft.ndim > 1:
      soft = soft.mean(axis=tuple(range(1, soft.ndim)))
    return (1 - weight) * hard + weight * soft, {**metrics, "hard_loss": hard}

  return per_example


def least_squares_optimum(x: np.ndarray, y: np.ndarray) -> float:
  """min over (W, b) of mean over examples of mean((x W + b - y)^2): the training loss of the
  exact least-squares solution (computed in float64), the floor that `excess_loss` is measured
  from for a linear model."""
  xs = np.concatenate([x.reshape(len(x), -1).astype(np.float64), np.ones((len(x), 1))], axis=1)
  ys = y.reshape(len(y), -1).astype(np.float64)
  w, *_ = np.linalg.lstsq(xs, ys, rcond=None)
  return float(np.mean((xs @ w - ys) ** 2))
