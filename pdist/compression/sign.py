"""Scaled sign: one bit per value and one scale (signSGD with error feedback, Karimireddy et al.
2019; 1-bit SGD, Seide et al. 2014).

  c = (||g||_1 / n) * sign(g)

Biased; plain signSGD can fail to converge, error feedback fixes it (Karimireddy et al. 2019,
EF-SignSGD). Payload: ceil(n / 8) bytes of signs and a float32 scale.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from pdist.compression.base import FLOAT_BYTES, all_values, stateless


def compress(g, key):
  del key
  return jnp.mean(jnp.abs(g)) * jnp.sign(g)


def wire_bytes(shape) -> int:
  return math.ceil(int(np.prod(shape, dtype=np.int64)) / 8) + FLOAT_BYTES


def make(config):
  del config
  return stateless("sign", compress, wire_bytes, all_values)
