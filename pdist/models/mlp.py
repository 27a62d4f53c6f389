"""Multi-layer perceptron: flatten, Dense+ReLU per hidden width, Dense to the outputs."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  hidden: Sequence[int]
  num_outputs: int
  dtype: Any = jnp.float32      # computation dtype; parameters stay float32
  remat: bool = False           # jax.checkpoint per hidden layer

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    dense = nn.remat(nn.Dense) if self.remat else nn.Dense
    for i, width in enumerate(self.hidden):   # Dense_i, as without remat
      x = nn.relu(dense(width, dtype=self.dtype, name=f"Dense_{i}")(x))
    return nn.Dense(self.num_outputs, dtype=self.dtype,
                    name=f"Dense_{len(self.hidden)}")(x).astype(jnp.float32)
