"""Gaussian noise on the aggregated gradient: the Gaussian mechanism of DP-SGD.

The clipped gradient arrives as (clipped sum) / B, with B the expected batch size, so noise of
standard deviation sigma * C on the sum is sigma * C / B on what arrives. It is added once per
update, after aggregation (the central stage of the gradient pipeline), with a key derived from
(seed, step) alone: the same noise whatever the number of devices, so `sync` on any device count
equals `single`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pdist.pipeline import GradientTransformation


def gaussian_noise(stddev: float) -> GradientTransformation:
  """grads + N(0, stddev^2) per coordinate, each leaf with its own fold of the key; no state."""
  def update(grads, state, params, rng):
    if stddev == 0:
      return grads, state, {}
    leaves, treedef = jax.tree.flatten(grads)
    # drawn and added in float32 whatever the gradient's dtype: bfloat16 noise takes a handful
    # of values near any given scale, which the Gaussian mechanism's analysis does not cover
    noisy = [g.astype(jnp.float32)
             + stddev * jax.random.normal(jax.random.fold_in(rng, i), g.shape, jnp.float32)
             for i, g in enumerate(leaves)]
    return jax.tree.unflatten(treedef, noisy), state, {}

  return GradientTransformation(lambda params: (), update)


def noise_norm_expected(stddev: float, num_params: int) -> float:
  """E||noise|| ~ stddev * sqrt(d): how large the noise is next to the gradient."""
  return float(stddev * jnp.sqrt(num_params))
