"""Poisson batch selection with fixed shapes, a pure function of (seed, step).

DP-SGD's privacy amplification by subsampling assumes *Poisson* sampling: at every step each of
the n training examples joins the batch independently with probability q (Abadi et al. 2016). The
batch size is then random (Binomial(n, q)), but a compiled step needs a fixed shape, so the batch
is padded to a cap with masked (weight 0) slots. If more than `cap` examples are drawn, a uniformly
random subset of `cap` is kept ("truncated Poisson sampling").

.. warning:: Truncation changes the mechanism. The cap is chosen so that a batch overflows with
   probability at most `overflow_tolerance` per step (reported as `overflow_probability`), and the
   accountant either models the truncation exactly (PLD: dp-accounting's
   TruncatedSubsampledGaussianDpEvent) or adds steps x overflow_probability to delta (RDP).

Fixed, shuffled batches (config.privacy.sampling='shuffle', the usual data loader) carry no
Poisson guarantee; pdist allows them for comparison and says so in the summary.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=32)
def batch_cap(n: int, q: float, multiple: int = 1, overflow_tolerance: float = 1e-9) -> int:
  """The smallest multiple of `multiple` that Binomial(n, q) exceeds with probability at most
  `overflow_tolerance`."""
  from scipy import stats
  cap = int(stats.binom.isf(overflow_tolerance, n, q)) + 1
  cap = min(max(cap, 1), n)
  return -(-cap // multiple) * multiple


def overflow_probability(n: int, q: float, cap: int) -> float:
  """P(Binomial(n, q) > cap): the chance that one step's batch is truncated."""
  from scipy import stats
  return float(stats.binom.sf(cap, n, q))


def poisson_batches(seed: int, step: int, num_steps: int, n: int, q: float,
                    cap: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, mask), each [num_steps, cap], for steps [step, step + num_steps).

  Step t's draw uses its own generator `default_rng([seed, t, 0x9015])`: each example is included
  with probability q, the included ones are put in a random order, the first `cap` kept, and the
  rest of the row is padding (index 0, mask 0).
  """
  idx = np.zeros((num_steps, cap), np.int32)
  mask = np.zeros((num_steps, cap), np.float32)
  for row, t in enumerate(range(step, step + num_steps)):
    rng = np.random.default_rng([seed, t, 0x9015])
    chosen = np.flatnonzero(rng.random(n) < q)
    chosen = rng.permutation(chosen)[:cap].astype(np.int32)
    idx[row, :len(chosen)] = chosen
    mask[row, :len(chosen)] = 1.0
  return idx, mask
