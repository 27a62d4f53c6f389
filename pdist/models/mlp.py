"""Multi-layer perceptron: flatten, Dense+ReLU per hidden width, Dense to the outputs."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  hidden: Sequence[int]
  num_outputs: int
  dtype: Any = jnp.float32      # computation dtype; parameters stay float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.num_outputs, dtype=self.dtype)(x).astype(jnp.float32)
