"""top-k sparsification: send the k largest-magnitude values and their indices.

  c = g on the k coordinates of largest |g_i|, 0 elsewhere;  k = max(1, round(ratio * n))

Biased (it drops the small coordinates every time), which is why it needs error feedback to
converge (Stich et al. 2018, "sparsified SGD with memory"; Lin et al. 2018, Deep Gradient
Compression). ratio = 1 keeps everything. Payload: k float32 values and k int32 indices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pdist.compression.base import FLOAT_BYTES, INDEX_BYTES, dense_bytes, stateless


def kept(n: int, ratio: float) -> int:
  return max(1, min(n, int(round(ratio * n))))


def make(config):
  ratio = float(config.compression.ratio)

  def compress(g, key):
    del key
    flat = g.reshape(-1)
    k = kept(flat.size, ratio)
    if k == flat.size:
      return g
    _, idx = jax.lax.top_k(jnp.abs(flat), k)
    return jnp.zeros_like(flat).at[idx].set(flat[idx]).reshape(g.shape)

  def wire_bytes(shape) -> int:
    n = int(np.prod(shape, dtype=np.int64))
    k = kept(n, ratio)
    return dense_bytes(shape) if k == n else k * (FLOAT_BYTES + INDEX_BYTES)

  return stateless("topk", compress, wire_bytes)
