"""top-k sparsification: send the k largest-magnitude values and their indices.

  c = p on the k coordinates of largest |p_i|, 0 elsewhere;   k = max(1, round(ratio * n))

where p is a unit of the gradient (base.py): the whole gradient, every leaf flattened and
concatenated (`config.compression.scope="global"`, the default: the vector Stich et al. 2018 and
Lin et al. 2018 sparsify), or each leaf on its own (`scope="leaf"`, n = the leaf's size, so every
leaf sends at least one value). round is Python's: to the nearest integer, a tie to the even one.
Among equal magnitudes the lower position (in the concatenation) is kept.

Biased (it drops the small coordinates every time), which is why it needs error feedback to
converge (Stich et al. 2018, "sparsified SGD with memory"; Lin et al. 2018, Deep Gradient
Compression). ratio = 1 keeps everything. Payload per unit: k float32 values and k int32
indices (positions in the flattened unit), 8k bytes; a unit with k = n is sent dense (4n bytes,
no indices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pdist.compression.base import FLOAT_BYTES, INDEX_BYTES, dense_bytes, size, stateless


def kept(n: int, ratio: float) -> int:
  """k for a unit of n values: the nearest integer to ratio * n, at least 1, at most n."""
  return max(1, min(n, int(round(ratio * n))))


def parts(unit) -> list:
  """A unit as a list of arrays: a leaf alone, or the whole gradient's leaves (base.py)."""
  return list(unit) if isinstance(unit, (list, tuple)) else [unit]


def _largest(scores: list, k: int) -> list:
  """The k largest of `scores` read as one flattened vector, per array: (candidate positions,
  which of them won; None = all). Each array's own min(k, n) largest are its candidates, so the k
  largest candidates are the k largest overall (an array of at most k values is all candidates,
  unsorted); this finds them without concatenating the arrays (on CPU XLA copied a concatenated
  gradient slower than it took the top-k). lax.top_k puts the lower index first among equal
  values, in both stages, and equal candidates stay in position order within and across arrays,
  so ties go to the lower position overall."""
  tops = [jax.lax.top_k(s.reshape(-1), k) if s.size > k else (s.reshape(-1), jnp.arange(s.size))
          for s in scores]
  if len(tops) == 1:
    return [(tops[0][1], None)]
  values = jnp.concatenate([v for v, _ in tops])
  _, winners = jax.lax.top_k(values, k)
  won = jnp.zeros(values.shape, bool).at[winners].set(True)
  return list(zip([i for _, i in tops], jnp.split(won, np.cumsum([v.size for v, _ in tops])[:-1])))


def keep_largest(unit, scores: list, k: int):
  """`unit` on the k coordinates of largest score (`scores`: one array per part of the unit,
  shaped like it), 0 elsewhere; shaped like `unit`."""
  out = []
  for g, (idx, won) in zip(parts(unit), _largest(scores, k)):
    flat = g.reshape(-1)
    values = flat[idx] if won is None else jnp.where(won, flat[idx], jnp.zeros((), flat.dtype))
    out.append(jnp.zeros_like(flat).at[idx].set(values).reshape(g.shape))
  return out if isinstance(unit, (list, tuple)) else out[0]


def make(config):
  ratio = float(config.compression.ratio)

  def compress(unit, key):
    del key
    arrays = parts(unit)
    n = sum(g.size for g in arrays)
    k = kept(n, ratio)
    return unit if k == n else keep_largest(unit, [jnp.abs(g) for g in arrays], k)

  def wire_bytes(shape) -> int:
    n = size(shape)
    k = kept(n, ratio)
    return dense_bytes(shape) if k == n else k * (FLOAT_BYTES + INDEX_BYTES)

  return stateless("topk", compress, wire_bytes, lambda shape: kept(size(shape), ratio),
                   config.compression.scope)
