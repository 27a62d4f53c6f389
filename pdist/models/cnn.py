"""Small convolutional nets: 1-D for MNIST-1D-like signals, 2-D for 8x8 digits.

CNN1D follows the MNIST-1D paper's baseline (Greydanus 2020): strided 1-D convolutions with ReLU,
then a dense layer over the flattened features.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class CNN1D(nn.Module):
  channels: Sequence[int]
  kernel: int
  num_outputs: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1, 1)).astype(self.dtype)    # [batch, length, 1 channel]
    for i, ch in enumerate(self.channels):
      k = self.kernel if i == 0 else 3
      x = nn.relu(nn.Conv(ch, (k,), strides=(2,), padding=[(1, 1)], dtype=self.dtype)(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_outputs, dtype=self.dtype)(x).astype(jnp.float32)


class CNN2D(nn.Module):
  channels: Sequence[int]
  kernel: int
  num_outputs: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if x.ndim == 3:
      x = x[..., None]                            # [batch, h, w, 1 channel]
    x = x.astype(self.dtype)
    for ch in self.channels:
      x = nn.relu(nn.Conv(ch, (self.kernel, self.kernel), padding="SAME", dtype=self.dtype)(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_outputs, dtype=self.dtype)(x).astype(jnp.float32)
