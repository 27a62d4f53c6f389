"""Datasets generated or shipped offline: MNIST-1D, sklearn digits, a synthetic teacher, the quadratic.

Nothing here touches the network. MNIST-1D is generated with the `mnist1d` package's own generator
(never its download path) and cached as .npz under the user's cache directory.
"""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np

from pdist.data import text
from pdist.data.base import Dataset, cache_dir  # noqa: F401  (part of this module's API)
from pdist.registry import DATASETS, ConfigError


def mnist1d(num_train: int = 4000, num_test: int = 1000) -> Dataset:
  """MNIST-1D (Greydanus 2020): 10 classes of length-40 signals, generated locally with seed 42.

  The generator reseeds numpy's and Python's global RNGs; their states are saved and restored so
  that generating the data never changes anything else's randomness.
  """
  total = num_train + num_test
  path = os.path.join(cache_dir(), f"mnist1d_{num_train}_{num_test}.npz")
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        return Dataset("mnist1d", "classification", f["x"], f["y"], f["x_test"], f["y_test"], 10)
    except (OSError, ValueError, KeyError):
      pass  # a corrupt cache file is regenerated below
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()
  args.num_samples = total
  args.train_split = num_train / total
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    d = make_dataset(args)
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  x, y = d["x"].astype(np.float32), d["y"].astype(np.int32)
  x_test, y_test = d["x_test"].astype(np.float32), d["y_test"].astype(np.int32)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, x=x, y=y, x_test=x_test, y_test=y_test)
  os.replace(tmp, path)
  return Dataset("mnist1d", "classification", x, y, x_test, y_test, 10)


def digits() -> Dataset:
  """sklearn's 8x8 handwritten digits (1797 images), scaled to [0, 1]; a fixed 1497/300 split."""
  from sklearn.datasets import load_digits

  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)
  y = d.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(y))
  x, y = x[order], y[order]
  return Dataset("digits", "classification", x[:1497], y[:1497], x[1497:], y[1497:], 10)


def teacher(num_train: int, num_test: int, dim: int = 784, num_classes: int = 10,
            seed: int = 0) -> Dataset:
  """Inputs N(0, 1) in R^dim; label = argmax of a fixed random linear teacher W x."""
  rng = np.random.default_rng([seed, 7919])
  w = rng.standard_normal((dim, num_classes)).astype(np.float32)
  x = rng.standard_normal((num_train + num_test, dim)).astype(np.float32)
  y = np.argmax(x @ w, axis=1).astype(np.int32)
  return Dataset("teacher", "classification", x[:num_train], y[:num_train],
                 x[num_train:], y[num_train:], num_classes)


def regression_teacher(num_train: int, num_test: int, dim: int, seed: int = 0,
                       noise: float = 0.1) -> Dataset:
  """y = <w, x> + noise for a fixed random w; the regression task's data."""
  rng = np.random.default_rng([seed, 104729])
  w = rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
  x = rng.standard_normal((num_train + num_test, dim)).astype(np.float32)
  y = (x @ w + noise * rng.standard_normal(len(x))).astype(np.float32)[:, None]
  return Dataset("regression", "regression", x[:num_train], y[:num_train],
                 x[num_train:], y[num_train:], 0)


def quadratic() -> Dataset:
  """The seed's problem has no data: loss = mean(theta^2); theta is the whole model."""
  return Dataset("quadratic", "quadratic", None, None, None, None, 0)


# -- registered loaders: name -> fn(config.data) -> Dataset, with the fields each one reads ----------
# Shared fields a dataset does not read must stay at their defaults: a value set for another
# dataset is refused rather than silently ignored (registry.Entry.reads, checked by config).
DEFAULTS = {
    "num_train": 4000,   # training examples generated (mnist1d, teacher, regression; digits: a subset)
    "num_test": 1000,    # test examples generated
    "dim": 784,          # teacher / regression: input dimension; quadratic: size of theta
    "num_classes": 10,   # teacher: number of classes
    "parts": 1,          # quadratic: theta stored as this many arrays (e.g. one per PS shard)
    "seed": 0,           # teacher / regression: seed of the data (mnist1d uses its own)
    "seq_len": 128,      # numpy_docs: bytes of context per example (the model's context length)
}
READS = {"mnist1d": ("num_train", "num_test"), "digits": ("num_train", "num_test"),
         "teacher": ("num_train", "num_test", "dim", "num_classes", "seed"),
         "regression": ("num_train", "num_test", "dim", "seed"), "quadratic": ("dim", "parts"),
         "numpy_docs": ("seq_len", "num_test")}
DIGITS_SPLIT = (1497, 300)


def _validate_digits(config) -> None:
  for field, have in zip(("num_train", "num_test"), DIGITS_SPLIT):
    value = config.data[field]
    if value != DEFAULTS[field] and value > have:
      raise ConfigError(f"config.data.{field}={value} but digits has {have} examples there; "
                        f"ask for at most {have} (a subset) or leave the default (all)")


def _digits_subset(d) -> Dataset:
  ds = digits()
  n_train = ds.num_train if d.num_train == DEFAULTS["num_train"] else d.num_train
  n_test = len(ds.x_test) if d.num_test == DEFAULTS["num_test"] else d.num_test
  return dataclasses.replace(ds, x_train=ds.x_train[:n_train], y_train=ds.y_train[:n_train],
                             x_test=ds.x_test[:n_test], y_test=ds.y_test[:n_test])


def _validate_quadratic(config) -> None:
  if config.data.parts < 1 or config.data.parts > config.data.dim:
    raise ConfigError(f"config.data.parts must be in [1, config.data.dim], got {config.data.parts}")
  if config.model.name != "none":
    raise ConfigError("config.data.name='quadratic' trains theta directly: set config.model.name='none'")


def _reads(name: str) -> tuple[str, ...]:
  return tuple(f"data.{field}" for field in READS[name])


DATASETS.register("mnist1d", reads=_reads("mnist1d"))(
    lambda d: mnist1d(d.num_train, d.num_test))
DATASETS.register("digits", validate=_validate_digits, reads=_reads("digits"))(_digits_subset)
DATASETS.register("teacher", reads=_reads("teacher"))(
    lambda d: teacher(d.num_train, d.num_test, d.dim, d.num_classes, d.seed))
DATASETS.register("regression", reads=_reads("regression"))(
    lambda d: regression_teacher(d.num_train, d.num_test, d.dim, d.seed))
DATASETS.register("quadratic", validate=_validate_quadratic, reads=_reads("quadratic"))(lambda d: quadratic())
def _validate_text(config) -> None:
  if config.model.name != "transformer":
    raise ConfigError(f"config.data.name='numpy_docs' is token data for a language model: set "
                      f"config.model.name='transformer' (not '{config.model.name}')")


def _numpy_docs(d) -> Dataset:
  """The text's windows; num_test away from its default keeps the first num_test validation
  windows (a cheaper evaluation for a large model), the default keeps them all."""
  ds = text.language_dataset(d.seq_len)
  if d.num_test != DEFAULTS["num_test"]:
    ds = dataclasses.replace(ds, x_test=ds.x_test[:d.num_test], y_test=ds.y_test[:d.num_test])
  return ds


DATASETS.register("numpy_docs", validate=_validate_text, reads=_reads("numpy_docs"))(_numpy_docs)


def load(data_config) -> Dataset:
  """The dataset named by `config.data`; checks that its batch size fits."""
  ds = DATASETS.get(data_config.name)(data_config)
  if ds.num_train and data_config.batch_size > ds.num_train:
    raise ConfigError(f"config.data.batch_size={data_config.batch_size} is larger than the "
                      f"{ds.num_train} training examples of '{data_config.name}'")
  return ds
