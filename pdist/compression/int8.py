"""int8: 8-bit quantisation with a per-tensor scale and stochastic rounding.

  scale = max|g| / 127;   q_i = floor(g_i / scale + u_i),  u_i ~ U[0, 1);   c = scale * q

Stochastic rounding makes it unbiased, E[c] = g (Gupta et al. 2015), with per-coordinate
variance at most scale^2 / 4. Payload: one byte per value plus a float32 scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pdist.compression.base import FLOAT_BYTES, all_values, stateless


def compress(g, key):
  scale = jnp.max(jnp.abs(g)) / 127.0
  safe = jnp.where(scale > 0, scale, 1.0)
  q = jnp.floor(g / safe + jax.random.uniform(key, g.shape, g.dtype))
  return jnp.clip(q, -127, 127) * scale


def wire_bytes(shape) -> int:
  return int(np.prod(shape, dtype=np.int64)) + FLOAT_BYTES


def make(config):
  del config
  return stateless("int8", compress, wire_bytes, all_values)
