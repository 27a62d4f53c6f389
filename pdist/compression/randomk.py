"""random-k sparsification: send k values at coordinates drawn at random.

  c = g on k coordinates chosen uniformly without replacement, 0 elsewhere; k = round(ratio * n)

Unscaled, so biased by the factor k / n, and corrected by error feedback (Stich et al. 2018).
The coordinates come from a seed the receiver shares, so only the values and the seed travel:
k float32 values and a 4-byte seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pdist.compression.base import FLOAT_BYTES, dense_bytes, stateless
from pdist.compression.topk import kept


def make(config):
  ratio = float(config.compression.ratio)

  def compress(g, key):
    flat = g.reshape(-1)
    k = kept(flat.size, ratio)
    if k == flat.size:
      return g
    # a uniform random k-subset: the k largest of n uniform keys (cheaper than a permutation)
    _, idx = jax.lax.top_k(jax.random.uniform(key, (flat.size,)), k)
    return jnp.zeros_like(flat).at[idx].set(flat[idx]).reshape(g.shape)

  def wire_bytes(shape) -> int:
    n = int(np.prod(shape, dtype=np.int64))
    k = kept(n, ratio)
    return dense_bytes(shape) if k == n else k * FLOAT_BYTES + 4

  return stateless("randomk", compress, wire_bytes)
