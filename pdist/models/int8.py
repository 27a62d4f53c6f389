"""int8 weight quantisation, per output channel and symmetric: the math behind `model.qat`
(quantisation-aware training, used in tasks' forward pass) and `python -m pdist.quantize`
(post-training, quantize.py; its docstring describes the scheme). `bits` (2..8) picks the
symmetric grid -L..L with L = 2^(bits - 1) - 1 (127 at 8 bits, 7 at 4); values are stored as int8
whatever the grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LEVELS = 127   # the int8 grid
BITS = range(2, 9)


def levels(bits: int = 8) -> int:
  """The symmetric grid's largest level at `bits` bits: 2^(bits - 1) - 1."""
  if bits not in BITS:
    raise ValueError(f"quantisation bits must be 2..8, got {bits}")
  return 2 ** (bits - 1) - 1


def quantizable(leaf) -> bool:
  return leaf.ndim >= 2


def quantize(w, bits: int = 8):
  """(int8 values, float32 per-output-channel scales) of a weight array on the `bits` grid."""
  top = levels(bits)
  axes = tuple(range(w.ndim - 1))
  scale = jnp.max(jnp.abs(w), axis=axes, keepdims=True) / top
  scale = jnp.where(scale > 0, scale, 1.0)
  q = jnp.clip(jnp.round(w / scale), -top, top).astype(jnp.int8)
  return q, scale.astype(jnp.float32)


def dequantize(q, scale):
  return q.astype(jnp.float32) * scale


def fake_quantize(params, bits: int = 8):
  """Every quantizable leaf replaced by its round trip through the `bits` grid, with a
  straight-through gradient."""
  def one(w):
    if not quantizable(w):
      return w
    rounded = dequantize(*quantize(w, bits)).astype(w.dtype)
    return w + jax.lax.stop_gradient(rounded - w)
  return jax.tree.map(one, params)


def size_bytes(params, int8: bool) -> int:
  total = 0
  for leaf in jax.tree.leaves(params):
    if int8 and quantizable(leaf):
      total += leaf.size + 4 * leaf.shape[-1]        # int8 values + one float32 scale a channel
    else:
      total += leaf.size * 4
  return total
