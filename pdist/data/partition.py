"""Splitting a training set over workers: iid shards, label-sorted shards, Dirichlet(alpha).

Each function returns a list of index arrays, one per worker, disjoint and covering the set (up to
the remainder of an even split for `iid`). With one worker every scheme returns all examples in
their original order, so a single worker sees exactly the data a single device sees.
"""

from __future__ import annotations

import numpy as np


def iid(n: int, workers: int, seed: int) -> list[np.ndarray]:
  """A random permutation cut into `workers` nearly equal parts."""
  if workers == 1:
    return [np.arange(n, dtype=np.int32)]
  perm = np.random.default_rng([seed, 1]).permutation(n).astype(np.int32)
  return [np.sort(p) for p in np.array_split(perm, workers)]


def label_shards(labels: np.ndarray, workers: int, seed: int,
                 shards_per_worker: int = 2) -> list[np.ndarray]:
  """Sort by label, cut into workers*shards_per_worker shards, deal them at random (McMahan 2017)."""
  n = len(labels)
  if workers == 1:
    return [np.arange(n, dtype=np.int32)]
  order = np.argsort(labels, kind="stable").astype(np.int32)
  shards = np.array_split(order, workers * shards_per_worker)
  deal = np.random.default_rng([seed, 2]).permutation(len(shards))
  return [np.sort(np.concatenate([shards[j] for j in deal[w::workers]])) for w in range(workers)]


def dirichlet(labels: np.ndarray, workers: int, alpha: float, seed: int) -> list[np.ndarray]:
  """Per class, worker shares ~ Dirichlet(alpha); small alpha = very non-iid (Hsu et al. 2019)."""
  n = len(labels)
  if workers == 1:
    return [np.arange(n, dtype=np.int32)]
  if alpha <= 0:
    raise ValueError(f"dirichlet alpha must be positive, got {alpha}")
  rng = np.random.default_rng([seed, 3])
  parts: list[list[np.ndarray]] = [[] for _ in range(workers)]
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    cuts = (np.cumsum(rng.dirichlet(np.full(workers, alpha))) * len(idx)).astype(int)[:-1]
    for w, piece in enumerate(np.split(idx, cuts)):
      parts[w].append(piece)
  out = [np.sort(np.concatenate(p)).astype(np.int32) for p in parts]
  # a worker left with nothing gets one example from the largest part, so every worker can train
  for w, part in enumerate(out):
    if len(part) == 0:
      big = int(np.argmax([len(p) for p in out]))
      out[w], out[big] = out[big][-1:], out[big][:-1]
  return out
