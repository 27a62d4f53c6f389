"""`single`: plain training on one device.

Updates run in compiled chunks: one jitted `lax.scan` over the log interval's batch indices, with
the training set resident on the device and each batch gathered inside the scan. So the Python loop
costs one dispatch per log interval, not one per update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pdist import optim
from pdist.data import batch_indices
from pdist.strategies import base
from pdist.tasks import Task


class Single(base.Strategy):
  name = "single"

  def __init__(self, config, task: Task, device: jax.Device | None = None):
    self.task = task
    self.tx = optim.build(config)
    self.seed = config.train.seed
    self.batch_size = config.data.batch_size
    self.device = device or jax.devices()[0]
    ds = task.dataset
    self.data = None
    if task.has_data:
      self.data = self.place_data({"x": ds.x_train, "y": ds.y_train})
    self._grad = base.grad_fn(task, config.optim.accumulate_steps)
    self._chunk = jax.jit(self._run_chunk, static_argnums=(3,), donate_argnums=(0,))

  def place_data(self, host: dict):
    """The training arrays, on the device(s) this strategy computes on."""
    return jax.device_put(host, self.device)

  def initial_state(self, rng):
    """The state before any update (on the default device)."""
    init_key, step_key = base.init_keys(rng)
    params = self.task.init(init_key)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": self.tx.init(params), "step_key": step_key}

  def init(self, rng):
    return jax.device_put(self.initial_state(rng), self.device)

  def gradients(self, params, batch, rng):
    """(grads, (loss, aux)) of one batch; data-parallel strategies add their all-reduce here."""
    return self._grad(params, batch, rng)

  def update(self, state, batch):
    """One update on one batch: theta <- optimizer(theta, grad(loss)(theta, batch))."""
    rng = jax.random.fold_in(state["step_key"], state["step"])
    grads, (loss, aux) = self.gradients(state["params"], batch, rng)
    params, opt_state = base.apply_gradient(self.tx, state["params"], state["opt_state"], grads)
    new = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
    return new, {"loss": loss, **aux}

  def _run_chunk(self, state, data, indices, num_updates: int):
    def body(state, idx):
      return self.update(state, base.gather_batch(data, idx))

    state, per_step = jax.lax.scan(body, state, indices, length=num_updates)
    return state, base.mean_metrics(per_step)

  def indices(self, step: int, num_updates: int) -> np.ndarray | None:
    if self.data is None:
      return None
    return batch_indices(self.seed, step, self.batch_size, self.task.dataset.num_train,
                         num_steps=num_updates)

  def run(self, state, num_updates: int):
    idx = self.indices(self.step(state), num_updates)
    state, metrics = self._chunk(state, self.data, idx, num_updates)
    return state, {k: float(v) for k, v in jax.device_get(metrics).items()}

