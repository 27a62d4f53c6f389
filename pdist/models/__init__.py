"""Flax (linen) models, registered by name. Every model is used through `init(rng, x) -> params`
and `apply(params, x) -> outputs` on plain parameter pytrees, so every strategy can vmap, scan and
shard_map over them unchanged.

A model's builder gets `config.model` and the `ModelInputs` that the dataset dictates (output
count, example shape and dtype, vocabulary size and sequence length for token data), so a
sequence model learns its vocabulary and context length from the data it trains on.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import numpy as np

from pdist.models.cnn import CNN1D, CNN2D
from pdist.models.mlp import MLP
from pdist.registry import MODELS, ConfigError


@dataclasses.dataclass(frozen=True)
class ModelInputs:
  """What the data tells a model: outputs per example, one example's shape and dtype, vocabulary."""
  num_outputs: int
  input_shape: tuple[int, ...]
  input_dtype: np.dtype = np.dtype(np.float32)
  vocab_size: int = 0

  @property
  def seq_len(self) -> int:
    """Sequence length of token data (the example's first axis); 0 for other data."""
    return self.input_shape[0] if self.vocab_size and self.input_shape else 0


def _needs_rank(name: str, rank: int, what: str, inputs: ModelInputs) -> None:
  if len(inputs.input_shape) != rank:
    raise ConfigError(f"config.model.name='{name}' needs {what}, but the data's examples have "
                      f"shape {inputs.input_shape}")


@MODELS.register("mlp")
def _mlp(m, inputs: ModelInputs) -> nn.Module:
  return MLP(hidden=tuple(m.hidden), num_outputs=inputs.num_outputs)


@MODELS.register("linear")
def _linear(m, inputs: ModelInputs) -> nn.Module:
  return MLP(hidden=(), num_outputs=inputs.num_outputs)


@MODELS.register("cnn1d")
def _cnn1d(m, inputs: ModelInputs) -> nn.Module:
  _needs_rank("cnn1d", 1, "1-D inputs (signals such as mnist1d, teacher, regression)", inputs)
  return CNN1D(channels=tuple(m.hidden), kernel=m.kernel, num_outputs=inputs.num_outputs)


@MODELS.register("cnn2d")
def _cnn2d(m, inputs: ModelInputs) -> nn.Module:
  _needs_rank("cnn2d", 2, "image inputs (2-D examples such as digits)", inputs)
  return CNN2D(channels=tuple(m.hidden), kernel=min(m.kernel, 3), num_outputs=inputs.num_outputs)


def _validate_none(config) -> None:
  if config.data.name != "quadratic":
    raise ConfigError(f"config.model.name='none' only fits config.data.name='quadratic', "
                      f"not '{config.data.name}'")


MODELS.register("none", validate=_validate_none)(None)  # the quadratic's theta is the model


def build(model_config, inputs: ModelInputs) -> nn.Module:
  """The Flax module named by `config.model.name`, sized for `inputs`."""
  return MODELS.get(model_config.name)(model_config, inputs)


__all__ = ["MLP", "CNN1D", "CNN2D", "ModelInputs", "build"]
