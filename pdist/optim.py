"""Optimizers from `config.optim`, built with optax.

sgd (optional heavy-ball or Nesterov momentum), adam, adamw; learning-rate schedules constant,
cosine (decay to 0 over train.steps), warmup (linear from 0 over warmup_steps, then constant) and
warmup_cosine; optional global-norm gradient clipping; the linear scaling rule for large batches.
"""

from __future__ import annotations

import optax

from pdist.config import ConfigError


def scaled_learning_rate(config) -> float:
  """config.optim.learning_rate, times batch_size / base_batch_size when base_batch_size > 0.

  The linear scaling rule (Goyal et al. 2017): when the global batch grows k-fold, grow the
  learning rate k-fold; pair it with a warmup schedule for large k.
  """
  lr = config.optim.learning_rate
  if config.optim.base_batch_size > 0:
    lr *= config.data.batch_size / config.optim.base_batch_size
  return lr


def schedule(config) -> optax.Schedule:
  """The learning rate as a function of the update count."""
  lr, steps, warmup = scaled_learning_rate(config), config.train.steps, config.optim.warmup_steps
  name = config.optim.schedule
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=steps)
  if name == "warmup":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1))
  raise ConfigError(f"config.optim.schedule='{name}' is not a known schedule")


def build(config) -> optax.GradientTransformation:
  """The optax transformation for `config.optim` (learning rate included)."""
  o = config.optim
  lr = schedule(config)
  if o.name == "sgd":
    tx = optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov)
  elif o.name == "adam":
    tx = optax.adam(lr)
  elif o.name == "adamw":
    tx = optax.adamw(lr, weight_decay=o.weight_decay)
  else:
    raise ConfigError(f"config.optim.name='{o.name}' is not a known optimizer")
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx
