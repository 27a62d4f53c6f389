"""Who holds which examples: partitions of a training set over workers (or clients).

`config.data.partition` names a registered scheme: `iid` shards, `label` (label-sorted shards),
`dirichlet` (per-class shares ~ Dirichlet(config.data.dirichlet_alpha)), or `shared` (no split:
worker k takes slice k of one global batch, as the devices of `sync` do). `WorkerSampler` turns a
scheme into batches: worker k's i-th batch is a pure function of (seed, k, i).

Each split function returns a list of index arrays, one per worker, disjoint and covering the set
(up to the remainder of an even split for `iid`). With one worker every scheme returns all examples
in their original order, so a single worker sees exactly the data a single device sees.
"""

from __future__ import annotations

import numpy as np

from pdist.data.sampler import batch_indices
from pdist.registry import PARTITIONS, ConfigError


def _needs_class_labels(labels: np.ndarray, scheme: str) -> None:
  if labels.ndim != 1:
    raise ConfigError(f"config.data.partition='{scheme}' splits by class label, and this "
                      "dataset's examples have none (a sequence of targets each); use iid or "
                      "contiguous")


def iid(n: int, workers: int, seed: int) -> list[np.ndarray]:
  """A random permutation cut into `workers` nearly equal parts."""
  if workers == 1:
    return [np.arange(n, dtype=np.int32)]
  perm = np.random.default_rng([seed, 1]).permutation(n).astype(np.int32)
  return [np.sort(p) for p in np.array_split(perm, workers)]


def label_shards(labels: np.ndarray, workers: int, seed: int,
                 shards_per_worker: int = 2) -> list[np.ndarray]:
  """Sort by label, cut into workers*shards_per_worker shards, deal them at random (McMahan 2017)."""
  _needs_class_labels(labels, "label")
  n = len(labels)
  if workers == 1:
    return [np.arange(n, dtype=np.int32)]
  order = np.argsort(labels, kind="stable").astype(np.int32)
  shards = np.array_split(order, workers * shards_per_worker)
  deal = np.random.default_rng([seed, 2]).permutation(len(shards))
  return [np.sort(np.concatenate([shards[j] for j in deal[w::workers]])) for w in range(workers)]


def dirichlet(labels: np.ndarray, workers: int, alpha: float, seed: int) -> list[np.ndarray]:
  """Per class, worker shares ~ Dirichlet(alpha); small alpha = very non-iid (Hsu et al. 2019)."""
  _needs_class_labels(labels, "dirichlet")
  n = len(labels)
  if workers == 1:
    return [np.arange(n, dtype=np.int32)]
  if alpha <= 0:
    raise ConfigError(f"config.data.dirichlet_alpha must be positive, got {alpha}")
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


# -- registered schemes: name -> fn(dataset, workers, seed, config.data) -> parts (None = shared) -----
PARTITIONS.register("iid")(lambda ds, k, seed, d: iid(ds.num_train, k, seed))
PARTITIONS.register("label")(lambda ds, k, seed, d: label_shards(ds.y_train, k, seed))
PARTITIONS.register("dirichlet", reads=("data.dirichlet_alpha",))(
    lambda ds, k, seed, d: dirichlet(ds.y_train, k, d.dirichlet_alpha, seed))
PARTITIONS.register("shared")(lambda ds, k, seed, d: None)
# contiguous stretches in the data's own order (for text: each worker or client its own part of
# the corpus, like LEAF's per-speaker Shakespeare)
PARTITIONS.register("contiguous")(
    lambda ds, k, seed, d: [p.astype(np.int32) for p in np.array_split(np.arange(ds.num_train), k)])


class WorkerSampler:
  """Batch indices of each worker's gradients under `config.data.partition`.

  With a split (iid, label, dirichlet) worker k draws its batches from its own part, in epochs of
  its own permutations; with `shared`, global batch i (batch_size * workers examples of the whole
  set) is cut into `workers` slices and worker k takes slice k of it.
  """

  def __init__(self, data_config, dataset, workers: int, seed: int, batch_size: int):
    self.name = data_config.partition
    self.workers, self.seed, self.batch_size = workers, seed, batch_size
    self.num_train = dataset.num_train
    self.parts = PARTITIONS.get(self.name)(dataset, workers, seed, data_config)
    smallest = self.num_train if self.parts is None else min(len(p) for p in self.parts)
    need = batch_size * (workers if self.parts is None else 1)
    if need > smallest and self.parts is None:
      raise ConfigError(
          f"config.data.batch_size={batch_size} per worker does not fit: with "
          f"config.data.partition='shared' a global batch of {workers} workers x {batch_size} = "
          f"{need} examples is cut from the training set, which has {smallest}")
    if need > smallest:
      raise ConfigError(
          f"config.data.batch_size={batch_size} per worker does not fit: a worker's data has "
          f"{smallest} examples (config.data.partition='{self.name}', {workers} workers)")
    self._global: dict[int, np.ndarray] = {}

  def indices(self, worker: int, iteration: int) -> np.ndarray:
    """Indices into the training set of `worker`'s `iteration`-th batch, shape [batch_size]."""
    b = self.batch_size
    if self.parts is None:
      if iteration not in self._global:
        if len(self._global) > 4 * self.workers:
          self._global.clear()
        self._global[iteration] = batch_indices(self.seed, iteration, b * self.workers,
                                                self.num_train)[0]
      return self._global[iteration][worker * b:(worker + 1) * b]
    part = self.parts[worker]
    return part[batch_indices(self.seed, iteration, b, len(part), worker=worker)[0]]

  def indices_many(self, workers: np.ndarray, iterations: np.ndarray) -> np.ndarray:
    """`indices(w, i)` for many (w, i) pairs at once, shape [len, batch_size]: one batch_indices
    call per worker over the span of its iterations (a worker's iterations in an interval are
    consecutive), not one per pair."""
    workers, iterations = np.asarray(workers), np.asarray(iterations)
    out = np.empty((len(workers), self.batch_size), np.int64)
    b = self.batch_size
    for w in np.unique(workers):
      rows = np.nonzero(workers == w)[0]
      first, last = int(iterations[rows].min()), int(iterations[rows].max())
      if self.parts is None:
        span = batch_indices(self.seed, first, b * self.workers, self.num_train,
                             num_steps=last - first + 1)[:, w * b:(w + 1) * b]
      else:
        part = self.parts[w]
        span = part[batch_indices(self.seed, first, b, len(part), worker=int(w),
                                  num_steps=last - first + 1)]
      out[rows] = span[iterations[rows] - first]
    return out

  def sizes(self) -> list[int]:
    """Examples held by each worker (all of them under `shared`)."""
    if self.parts is None:
      return [self.num_train] * self.workers
    return [len(p) for p in self.parts]
