"""Datasets, the stateless sampler and the partitions."""

import random

import numpy as np
import pytest

from pdist import data
from pdist.data import datasets


def test_sampler_is_pure_and_covers_each_epoch_once():
  n, b = 103, 10
  all_idx = data.batch_indices(seed=5, step=0, batch_size=b, n=n, num_steps=30)
  assert all_idx.shape == (30, b)
  # the same steps asked one at a time, in any order, give the same indices
  for step in (17, 3, 29, 0):
    np.testing.assert_array_equal(data.batch_indices(5, step, b, n), all_idx[step:step + 1])
  flat = all_idx.reshape(-1)
  for e in range(2):  # each full epoch is a permutation of range(n)
    assert sorted(flat[e * n:(e + 1) * n]) == list(range(n))
  assert not np.array_equal(flat[:n], flat[n:2 * n])  # epochs reshuffle
  # other seeds and workers give other streams
  assert not np.array_equal(data.batch_indices(6, 0, b, n), all_idx[:1])
  assert not np.array_equal(data.batch_indices(5, 0, b, n, worker=1), all_idx[:1])


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_partitions_are_disjoint_and_cover(workers):
  labels = np.random.default_rng(0).integers(0, 10, size=1000)
  for parts in (data.iid(1000, workers, 0), data.label_shards(labels, workers, 0),
                data.dirichlet(labels, workers, 0.3, 0)):
    assert len(parts) == workers
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == 1000
    assert all(len(p) > 0 for p in parts)
  if workers == 1:  # one worker: the whole set, in order
    np.testing.assert_array_equal(data.iid(1000, 1, 0)[0], np.arange(1000))


def test_label_shards_and_small_alpha_are_non_iid():
  labels = np.repeat(np.arange(10), 100)
  for parts in (data.label_shards(labels, 5, 0), data.dirichlet(labels, 5, 0.05, 0)):
    classes_per_worker = [len(np.unique(labels[p])) for p in parts]
    assert np.mean(classes_per_worker) < 6  # iid shards would hold all 10 classes each
  iid_classes = [len(np.unique(labels[p])) for p in data.iid(1000, 5, 0)]
  assert min(iid_classes) == 10


def test_mnist1d_generated_offline_cached_and_rng_isolated(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  np.random.seed(123)
  random.seed(123)
  expected_np, expected_py = np.random.rand(), random.random()
  np.random.seed(123)
  random.seed(123)
  ds = datasets.mnist1d(300, 100)
  assert np.random.rand() == expected_np and random.random() == expected_py
  assert ds.x_train.shape == (300, 40) and ds.x_test.shape == (100, 40)
  assert ds.x_train.dtype == np.float32 and set(np.unique(ds.y_train)) == set(range(10))
  cached = list((tmp_path / "pdist").iterdir())
  assert len(cached) == 1
  again = datasets.mnist1d(300, 100)  # from the cache: identical
  np.testing.assert_array_equal(again.x_train, ds.x_train)
  cached[0].write_bytes(b"corrupt")   # a corrupt cache file is regenerated
  np.testing.assert_array_equal(datasets.mnist1d(300, 100).x_train, ds.x_train)


def test_teacher_labels_follow_the_teacher():
  ds = datasets.teacher(500, 100, dim=784, num_classes=10, seed=3)
  assert ds.x_train.shape == (500, 784)
  again = datasets.teacher(500, 100, dim=784, num_classes=10, seed=3)
  np.testing.assert_array_equal(ds.y_train, again.y_train)
  counts = np.bincount(ds.y_train, minlength=10)
  assert counts.min() > 10  # a random linear teacher uses every class


def test_digits_split():
  ds = datasets.digits()
  assert ds.x_train.shape == (1497, 8, 8) and ds.x_test.shape == (300, 8, 8)
  assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1


@pytest.mark.parametrize("partition", ["iid", "shared", "label"])
def test_many_batches_at_once_are_the_batches_one_by_one(partition):
  from conftest import load_experiment
  c = load_experiment("mnist1d", "tiny")
  c.data.partition = partition
  ds = data.load(c.data)
  sampler = data.WorkerSampler(c.data, ds, 4, 3, 16)
  rng = np.random.default_rng(0)
  workers = rng.integers(0, 4, 60)
  iterations = np.concatenate([np.arange(15) + 7 * w for w in range(4)])[rng.permutation(60)]
  many = sampler.indices_many(workers, iterations)
  for w, i, row in zip(workers, iterations, many):
    assert np.array_equal(row, sampler.indices(int(w), int(i)))
