"""Stateless batch sampling: which examples a step uses is a pure function of (seed, step, worker).

Examples are drawn without replacement in epochs; epoch e of stream (seed, worker) is the
permutation `default_rng([seed, worker, e]).permutation(n)`. Step s of batch size B takes the
positions s*B .. s*B+B-1 of the concatenated epochs. Restoring a run therefore needs only its step.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def _epoch_permutation(seed: int, worker: int, epoch: int, n: int) -> np.ndarray:
  perm = np.random.default_rng([seed, worker, epoch]).permutation(n).astype(np.int32)
  perm.flags.writeable = False
  return perm


def batch_indices(seed: int, step: int, batch_size: int, n: int, worker: int = 0,
                  num_steps: int = 1) -> np.ndarray:
  """Indices into a set of n examples for steps [step, step + num_steps): shape [num_steps, B]."""
  start = step * batch_size
  stop = (step + num_steps) * batch_size
  first, last = start // n, (stop - 1) // n
  pieces = []
  for epoch in range(first, last + 1):
    lo = max(start, epoch * n) - epoch * n
    hi = min(stop, (epoch + 1) * n) - epoch * n
    pieces.append(_epoch_permutation(seed, worker, epoch, n)[lo:hi])
  return np.concatenate(pieces).reshape(num_steps, batch_size)
