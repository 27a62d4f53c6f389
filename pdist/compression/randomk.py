"""random-k sparsification: send k values at coordinates drawn at random.

  c = p on k coordinates chosen uniformly without replacement, 0 elsewhere;  k as in topk.py

over the same units as top-k (`config.compression.scope`: the whole gradient, or each leaf): the
k coordinates of largest score, with i.i.d. uniform scores, are a uniform random k-subset.
Unscaled, so biased by the factor k / n, and corrected by error feedback (Stich et al. 2018).
The coordinates come from a seed the receiver shares, so only the values and the seed travel:
per unit k float32 values and a 4-byte seed (a unit with k = n is sent dense).
"""

from __future__ import annotations

import jax

from pdist.compression.base import FLOAT_BYTES, dense_bytes, size, stateless
from pdist.compression.topk import keep_largest, kept, parts

SEED_BYTES = 4


def make(config):
  ratio = float(config.compression.ratio)

  def compress(unit, key):
    arrays = parts(unit)
    n = sum(g.size for g in arrays)
    k = kept(n, ratio)
    if k == n:
      return unit
    if len(arrays) == 1:       # one array: the draw random-k made before it had scopes
      scores = [jax.random.uniform(key, (n,))]
    else:
      scores = [jax.random.uniform(jax.random.fold_in(key, i), (g.size,))
                for i, g in enumerate(arrays)]
    return keep_largest(unit, scores, k)

  def wire_bytes(shape) -> int:
    n = size(shape)
    k = kept(n, ratio)
    return dense_bytes(shape) if k == n else k * FLOAT_BYTES + SEED_BYTES

  return stateless("randomk", compress, wire_bytes, lambda shape: kept(size(shape), ratio),
                   config.compression.scope)
