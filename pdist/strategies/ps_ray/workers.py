"""The workers' side: `Worker` k computes the gradient of its iteration-th batch as one compiled
call, and `WorkerProcess` is the body of the Ray actor that holds one. pdist.replay computes with
the same `Worker`s in one process, so a trace replays bit for bit."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from pdist.data import WorkerSampler
from pdist.strategies import base
from pdist.strategies.ps_ray.transport import Flat, Slots
from pdist.tasks import Task


class Worker:
  """Worker k of a run: the gradient of its `iteration`-th batch as one compiled call (batch
  gathered from the device-resident training set, rng folded, gradient taken), the emulator's
  batches (WorkerSampler) and rngs (fold_in(fold_in(step_key, k), iteration)). The real
  backend's actors and pdist.replay both compute with it, so they run the same program."""

  def __init__(self, k: int, grad, data, sampler, step_key):
    self.id, self._grad, self._data, self._sampler = k, grad, data, sampler
    self._key = jax.random.fold_in(step_key, k)

  def gradient(self, params, iteration: int):
    """(gradient, {"loss", **task metrics}) at `params`."""
    idx = None if self._sampler is None else self._sampler.indices(self.id, iteration)
    grads, (loss, aux) = self._grad(params, self._data, idx, self._key, np.int32(iteration))
    return grads, {"loss": loss, **aux}

  def compute(self, params, iteration: int):
    return self.gradient(params, iteration)[0]


def workers_of(config, task: Task, ids) -> dict[int, Worker]:
  """`Worker`s for the ids `ids` of this config, sharing one compiled gradient."""
  grad = base.grad_fn(task, config.optim.accumulate_steps)
  arrays = base.training_arrays(task)
  data = None if arrays is None else jax.device_put(arrays)
  sampler = None if arrays is None else WorkerSampler(
      config.data, task.dataset, config.ps.workers, config.train.seed, config.data.batch_size)
  _, step_key = base.init_keys(jax.random.PRNGKey(config.train.seed))

  @jax.jit
  def fused(params, data, idx, key, iteration):
    batch = None if data is None else base.gather_batch(data, idx)
    return grad(params, batch, jax.random.fold_in(key, iteration))

  return {k: Worker(k, fused, data, sampler, step_key) for k in ids}


class WorkerProcess:
  """The body of a Ray actor: one worker, built from the config and the dataset."""

  def __init__(self, config, worker: int, slots: tuple | None = None, teacher=None):
    if config.ps.ray_worker_gpus:  # a share of a GPU (Ray sets CUDA_VISIBLE_DEVICES): no JAX
      os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # preallocation
    else:  # CPU workers stay off any GPU of the host (each would preallocate most of it)
      os.environ["JAX_PLATFORMS"] = "cpu"
    from pdist import data, tasks  # noqa: PLC0415
    task = tasks.build(config, data.load(config.data), teacher)   # the driver's teacher, if any
    self.id = worker
    self.worker = workers_of(config, task, [worker])[worker]
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    self.flat = Flat(abstract)
    self.slots = None if slots is None else Slots(*slots[:3], prefix=slots[3])
    jax.block_until_ready(self.worker.gradient(   # compile now, not in the first gradient
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract), 0))

  def ready(self) -> int:
    return os.getpid()

  def _timed(self, flat_params, iteration: int, out=None):
    """(flat gradient, metrics as floats, seconds it took) at the flat parameters."""
    start = time.perf_counter()
    grads, metrics = self.worker.gradient(self.flat.unravel(flat_params), iteration)
    flat = self.flat.ravel(grads, out=out)
    return flat, {k: float(v) for k, v in jax.device_get(metrics).items()}, \
        time.perf_counter() - start

  def compute(self, flat_params, iteration: int):
    """(flat gradient as numpy, metrics as floats, seconds it took)."""
    return self._timed(flat_params, iteration)

  def compute_shared(self, iteration: int):
    """`compute` through this worker's shared rows: parameters in, gradient out; returns
    (None, metrics, seconds)."""
    _, metrics, seconds = self._timed(self.slots.params[self.id], iteration,
                                      out=self.slots.grads[self.id])
    return None, metrics, seconds
