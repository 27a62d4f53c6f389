"""Optimizers and learning-rate schedules from `config.optim`, built with optax, registered by name.

Optimizers: sgd (optional heavy-ball or Nesterov momentum), adam, adamw, yogi. Schedules: constant,
cosine (decay to 0 over train.steps), warmup (linear from 0 over warmup_steps, then constant),
warmup_cosine. Optional global-norm gradient clipping; the linear scaling rule for large batches.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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


# the shared fields each schedule reads (the others must stay at their defaults: registry.Entry)
WARMUP = ("optim.warmup_steps", "optim.warmup_from")
DECAY = ("optim.decay_steps", "optim.decay_factor")

SCHEDULES.register("constant")(
    lambda lr, steps, warmup, o: optax.constant_schedule(lr))
SCHEDULES.register("cosine")(
    lambda lr, steps, warmup, o: optax.cosine_decay_schedule(lr, decay_steps=steps))
SCHEDULES.register("warmup", validate=_needs_warmup, reads=WARMUP)(
    lambda lr, steps, warmup, o: optax.join_schedules(
        [optax.linear_schedule(lr * o.warmup_from, lr, warmup), optax.constant_schedule(lr)],
        [warmup]))
SCHEDULES.register("warmup_cosine", validate=_needs_warmup, reads=WARMUP)(
    lambda lr, steps, warmup, o: optax.warmup_cosine_decay_schedule(
        lr * o.warmup_from, lr, warmup, max(steps, warmup + 1)))


def _step_decay(lr, o):
  """lr times decay_factor at each of decay_steps (e.g. x0.1 at epochs 30, 60, 80)."""
  return optax.piecewise_constant_schedule(lr, {int(b): o.decay_factor for b in o.decay_steps})


def _needs_decay_steps(config) -> None:
  o = config.optim
  if not o.decay_steps:
    raise ConfigError(f"config.optim.schedule='{o.schedule}' needs config.optim.decay_steps, "
                      "e.g. (3000, 6000)")
  if list(o.decay_steps) != sorted(o.decay_steps) or min(o.decay_steps) <= 0:
    raise ConfigError(f"config.optim.decay_steps must be increasing positive updates, got "
                      f"{tuple(o.decay_steps)}")
  if not 0 < o.decay_factor < 1:
    raise ConfigError(f"config.optim.decay_factor must be in (0, 1), got {o.decay_factor}")


SCHEDULES.register("step", validate=_needs_decay_steps, reads=DECAY)(
    lambda lr, steps, warmup, o: _step_decay(lr, o))
SCHEDULES.register("warmup_step", validate=lambda c: (_needs_warmup(c), _needs_decay_steps(c)),
                   reads=WARMUP + DECAY)(
    lambda lr, steps, warmup, o: optax.join_schedules(
        [optax.linear_schedule(lr * o.warmup_from, lr, warmup),
         lambda t: _step_decay(lr, o)(t + warmup)], [warmup]))


def schedule(config) -> optax.Schedule:
  """The learning rate as a function of the update count."""
  return SCHEDULES.get(config.optim.schedule)(
      scaled_learning_rate(config), config.train.steps, config.optim.warmup_steps, config.optim)


def _nesterov_needs_momentum(config) -> None:
  if config.optim.nesterov and not config.optim.momentum:
    raise ConfigError("config.optim.nesterov=True needs config.optim.momentum > 0")


def _sgd(o, lr):
  """SGD with optional momentum / Nesterov and weight decay (added to the gradient, so it is
  scaled by the learning rate as in Goyal et al. 2017's recipe)."""
  tx = optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov)
  return optax.chain(optax.add_decayed_weights(o.weight_decay), tx) if o.weight_decay else tx


OPTIMIZERS.register("sgd", validate=_nesterov_needs_momentum,
                    reads=("optim.momentum", "optim.nesterov", "optim.weight_decay"))(_sgd)
OPTIMIZERS.register("adam")(lambda o, lr: optax.adam(lr))
OPTIMIZERS.register("adamw", reads=("optim.weight_decay",))(
    lambda o, lr: optax.adamw(lr, weight_decay=o.weight_decay))
# yogi (Zaheer et al. 2018): FedYogi's server optimizer (Reddi et al. 2021) with their eps 1e-3
OPTIMIZERS.register("yogi")(lambda o, lr: optax.yogi(lr, eps=1e-3))


class FedOptState(NamedTuple):
  m: Any
  v: Any


def fedopt(kind: str, learning_rate, b1: float = 0.9, b2: float = 0.99,
           tau: float = 1e-3) -> optax.GradientTransformation:
  """FedAdam / FedYogi as Reddi et al. 2021 (Adaptive Federated Optimization, Algorithm 2) write
  them, on the pseudo-gradient g = -(average client change):
      m_t = b1 m_{t-1} + (1 - b1) g
      v_t = b2 v_{t-1} + (1 - b2) g^2                      (adam)
      v_t = v_{t-1} - (1 - b2) g^2 sign(v_{t-1} - g^2)     (yogi)
      x_{t+1} = x_t - lr m_t / (sqrt(v_t) + tau)
  with m_{-1} = 0, v_{-1} = tau^2 and no bias correction; tau is the adaptivity (1e-3 in the
  paper's experiments). optax.adam / optax.yogi differ: eps 1e-8 (adam), bias correction, another
  start for v."""
  if kind not in ("adam", "yogi"):
    raise ValueError(f"fedopt is adam or yogi, not {kind!r}")

  def init(params):
    return FedOptState(m=jax.tree.map(jnp.zeros_like, params),
                       v=jax.tree.map(lambda p: jnp.full_like(p, tau ** 2), params))

  def update(g, state, params=None):
    del params
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.m, g)
    if kind == "adam":
      v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.v, g)
    else:
      v = jax.tree.map(lambda v, g: v - (1 - b2) * g * g * jnp.sign(v - g * g), state.v, g)
    step = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), m, v)
    return step, FedOptState(m, v)

  return optax.chain(optax.GradientTransformation(init, update),
                     optax.scale_by_learning_rate(learning_rate))


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
