"""QSGD: stochastic quantisation to s levels of the norm, in buckets (Alistarh et al. 2017).

The gradient is cut into buckets of d = 512 values (the paper's bucketing); within a bucket v,

  c_i = ||v|| * sign(v_i) * xi_i,   xi_i = (l + 1) / s with probability |v_i| s / ||v|| - l,
                                    else l / s,   l = floor(|v_i| s / ||v||)

Unbiased, E[c] = v, and (Lemma 3.1) E||c - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2 per bucket.
Payload: a float32 norm per bucket, then per value a sign bit and its level in ceil(log2(s + 1))
bits (the fixed-width code; the paper's Elias coding is smaller for small s, not modelled).

.. warning:: Being unbiased with variance, QSGD is meant to be used *without* error feedback
   (`config.compression.error_feedback=False`): with it, the residual can grow when the variance
   factor above exceeds 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pdist.compression.base import FLOAT_BYTES, all_values, stateless

BUCKET = 512


def quantise(g, key, levels: int, bucket: int = BUCKET):
  flat = g.reshape(-1)
  n = flat.size
  size = min(bucket, n)
  pad = -n % size
  v = jnp.concatenate([flat, jnp.zeros((pad,), flat.dtype)]).reshape(-1, size)
  norm = jnp.sqrt(jnp.sum(v * v, axis=1, keepdims=True))
  safe = jnp.where(norm > 0, norm, 1.0)
  scaled = jnp.abs(v) / safe * levels
  low = jnp.floor(scaled)
  level = low + (jax.random.uniform(key, v.shape, v.dtype) < scaled - low)
  c = norm * jnp.sign(v) * level / levels
  return c.reshape(-1)[:n].reshape(g.shape)


def bits_per_value(levels: int) -> int:
  return 1 + math.ceil(math.log2(levels + 1))


def wire_bytes_for(shape, levels: int, bucket: int = BUCKET) -> int:
  n = int(np.prod(shape, dtype=np.int64))
  return FLOAT_BYTES * math.ceil(n / bucket) + math.ceil(n * bits_per_value(levels) / 8)


def make(config):
  levels = int(config.compression.levels)
  return stateless("qsgd", lambda g, key: quantise(g, key, levels),
                   lambda shape: wire_bytes_for(shape, levels), all_values)
