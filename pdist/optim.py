"""Optimizers and learning-rate schedules from `config.optim`, built with optax, registered by name.

Optimizers: sgd (optional heavy-ball or Nesterov momentum), adam, adamw. Schedules: constant,
cosine (decay to 0 over train.steps), warmup (linear from 0 over warmup_steps, then constant),
warmup_cosine. Optional global-norm gradient clipping; the linear scaling rule for large batches.
"""

from __future__ import annotations

import optax

from pdist.registry import OPTIMIZERS, SCHEDULES, ConfigError


def scaled_learning_rate(config) -> float:
  """config.optim.learning_rate, times batch_size / base_batch_size when base_batch_size > 0.

  The linear scaling rule (Goyal et al. 2017): when the global batch grows k-fold, grow the
  learning rate k-fold; pair it with a warmup schedule for large k.
  """
  lr = config.optim.learning_rate
  if config.optim.base_batch_size > 0:
    lr *= config.data.batch_size / config.optim.base_batch_size
  return lr


def _needs_warmup(config) -> None:
  if config.optim.warmup_steps == 0:
    raise ConfigError(f"config.optim.schedule='{config.optim.schedule}' needs "
                      "config.optim.warmup_steps > 0")
  if config.optim.warmup_steps > config.train.steps:
    raise ConfigError(f"config.optim.warmup_steps={config.optim.warmup_steps} is longer than the "
                      f"run (config.train.steps={config.train.steps})")


def _no_warmup(config) -> None:
  if config.optim.warmup_steps:
    raise ConfigError(f"config.optim.warmup_steps={config.optim.warmup_steps} does not apply to "
                      f"config.optim.schedule='{config.optim.schedule}'; use warmup or "
                      "warmup_cosine")


SCHEDULES.register("constant", validate=_no_warmup)(
    lambda lr, steps, warmup: optax.constant_schedule(lr))
SCHEDULES.register("cosine", validate=_no_warmup)(
    lambda lr, steps, warmup: optax.cosine_decay_schedule(lr, decay_steps=steps))
SCHEDULES.register("warmup", validate=_needs_warmup)(
    lambda lr, steps, warmup: optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]))
SCHEDULES.register("warmup_cosine", validate=_needs_warmup)(
    lambda lr, steps, warmup: optax.warmup_cosine_decay_schedule(0.0, lr, warmup,
                                                                 max(steps, warmup + 1)))


def schedule(config) -> optax.Schedule:
  """The learning rate as a function of the update count."""
  return SCHEDULES.get(config.optim.schedule)(
      scaled_learning_rate(config), config.train.steps, config.optim.warmup_steps)


def _only(*fields):
  """A check that the optimizer-specific fields other than `fields` are left at 0 / False."""
  def validate(config):
    o = config.optim
    for field in ("momentum", "nesterov", "weight_decay"):
      if field not in fields and o[field]:
        raise ConfigError(f"config.optim.{field}={o[field]} does not apply to "
                          f"config.optim.name='{o.name}'; leave it unset")
    if o.nesterov and not o.momentum:
      raise ConfigError("config.optim.nesterov=True needs config.optim.momentum > 0")
  return validate


OPTIMIZERS.register("sgd", validate=_only("momentum", "nesterov"))(
    lambda o, lr: optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov))
OPTIMIZERS.register("adam", validate=_only())(lambda o, lr: optax.adam(lr))
OPTIMIZERS.register("adamw", validate=_only("weight_decay"))(
    lambda o, lr: optax.adamw(lr, weight_decay=o.weight_decay))


def build(config) -> optax.GradientTransformation:
  """The optax transformation for `config.optim` (learning rate included)."""
  o = config.optim
  tx = OPTIMIZERS.get(o.name)(o, schedule(config))
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx


def apply_gradient(tx: optax.GradientTransformation, params, opt_state, grads):
  """theta <- optimizer(theta, grad): one optax update."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
