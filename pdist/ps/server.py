"""An eager parameter server and worker, for notebooks and for checking the compiled replay.

    server = ParameterServer(params, tx, num_shards=2, staleness_lr="inverse")
    parts, versions = server.pull()                  # every shard: its leaves and version
    grads = worker.compute(server.params, iteration=0)
    staleness = server.push(worker.id, grads, versions)  # per shard: version now - version pulled

`ParameterServerStrategy` runs the same math compiled (strategy.py); tests/test_ps.py drives this
class with the simulator's schedule and checks that both give the same parameters.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pdist.ps import sharding


class ParameterServer:
  """Parameters split over shards; each shard has its own optimizer state and version."""

  def __init__(self, params, tx: optax.GradientTransformation, num_shards: int = 1,
               staleness_lr: str = "none"):
    self.tx = tx
    self.shards = sharding.partition_leaves(params, num_shards)
    self._params = params
    self.opt_states = sharding.init_opt_states(tx, params, self.shards)
    self.versions = [0] * len(self.shards)
    self.inverse_lr = staleness_lr == "inverse"
    self._apply = jax.jit(
        lambda p, o, g, scale, s: sharding.apply_sharded(tx, p, o, g, self.shards, scale, only=[s]),
        static_argnums=(4,))

  @property
  def params(self):
    """The whole parameter pytree, as the shards hold it now."""
    return self._params

  def pull(self, shard_ids: Sequence[int] | None = None):
    """({shard: [leaves]}, {shard: version}) for the requested shards (default: all)."""
    ids = range(len(self.shards)) if shard_ids is None else shard_ids
    leaves = jax.tree.leaves(self._params)
    return ({s: [leaves[i] for i in self.shards[s]] for s in ids},
            {s: self.versions[s] for s in ids})

  def push(self, worker: int, grads, pulled_versions: dict[int, int]) -> dict[int, int]:
    """Applies `grads` to each shard in `pulled_versions`; returns each shard's staleness."""
    del worker  # the server treats every worker alike; kept for logs and symmetry with pull
    staleness = {}
    for s, pulled in pulled_versions.items():
      tau = self.versions[s] - pulled
      scale = 1.0 / tau if self.inverse_lr and tau >= 1 else 1.0
      self._params, self.opt_states = self._apply(self._params, self.opt_states, grads,
                                                  np.float32(scale), s)
      self.versions[s] += 1
      staleness[s] = tau
    return staleness


class Worker:
  """Computes gradients of its own batches: batch_fn(iteration) -> batch."""

  def __init__(self, worker_id: int, grad_fn: Callable, batch_fn: Callable[[int], object],
               step_key: jax.Array):
    self.id = worker_id
    self._grad = jax.jit(grad_fn)
    self._batch = batch_fn
    self._key = jax.random.fold_in(step_key, worker_id)

  def compute(self, params, iteration: int):
    """The gradient of this worker's `iteration`-th batch at `params`."""
    return self.gradient(params, iteration)[0]

  def gradient(self, params, iteration: int):
    """(gradient, {"loss", **task metrics}) of this worker's `iteration`-th batch at `params`."""
    rng = jax.random.fold_in(self._key, iteration)
    grads, (loss, aux) = self._grad(params, self._batch(iteration), rng)
    return grads, {"loss": loss, **aux}


@jax.jit
def average(grads: list):
  """The mean of several workers' gradients, in the order given (a bsp round's)."""
  return jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), axis=0), *grads)
