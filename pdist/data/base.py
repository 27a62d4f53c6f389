"""What every dataset is: `Dataset` (arrays in host memory) and where generated data is cached.

datasets.py (the registered datasets) and text.py (the character-level corpus) both build on it.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Arrays in host memory. `kind` is "classification", "regression", "language" (x: token
  windows, y: the next token at each position) or "quadratic" (no data)."""
  name: str
  kind: str
  x_train: np.ndarray | None
  y_train: np.ndarray | None
  x_test: np.ndarray | None
  y_test: np.ndarray | None
  num_classes: int = 0
  vocab_size: int = 0  # token data: inputs are integers in [0, vocab_size)

  @property
  def num_train(self) -> int:
    return 0 if self.x_train is None else len(self.x_train)

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The shape of one example (without the batch axis); () for data-free tasks."""
    return () if self.x_train is None else tuple(self.x_train.shape[1:])

  @property
  def input_dtype(self) -> np.dtype:
    """The dtype of the inputs (float32 for signals and images; integers for token data)."""
    return np.dtype(np.float32) if self.x_train is None else self.x_train.dtype


def cache_dir() -> str:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "pdist")
