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
import jax.numpy as jnp
import numpy as np

from pdist.models.cnn import CNN1D, CNN2D
from pdist.models.mlp import MLP
from pdist.models.transformer import Transformer
from pdist.registry import MODELS, ConfigError, check_choice, check_positive


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


DTYPES = ("float32", "bfloat16")


def _dtype(m):
  """The computation dtype (config.model.dtype): bfloat16 is mixed precision — activations and
  matmuls in bfloat16, parameters, optimizer state and the loss in float32."""
  return jnp.dtype(m.dtype)


@MODELS.register("mlp", reads=("model.hidden", "model.remat"))
def _mlp(m, inputs: ModelInputs) -> nn.Module:
  return MLP(hidden=tuple(m.hidden), num_outputs=inputs.num_outputs, dtype=_dtype(m),
             remat=m.remat == "block")


@MODELS.register("linear")
def _linear(m, inputs: ModelInputs) -> nn.Module:
  return MLP(hidden=(), num_outputs=inputs.num_outputs, dtype=_dtype(m))


@MODELS.register("cnn1d", reads=("model.hidden", "model.kernel"))
def _cnn1d(m, inputs: ModelInputs) -> nn.Module:
  _needs_rank("cnn1d", 1, "1-D inputs (signals such as mnist1d, teacher, regression)", inputs)
  return CNN1D(channels=tuple(m.hidden), kernel=m.kernel, num_outputs=inputs.num_outputs,
               dtype=_dtype(m))


@MODELS.register("cnn2d", reads=("model.hidden", "model.kernel"))
def _cnn2d(m, inputs: ModelInputs) -> nn.Module:
  _needs_rank("cnn2d", 2, "image inputs (2-D examples such as digits)", inputs)
  return CNN2D(channels=tuple(m.hidden), kernel=min(m.kernel, 3), num_outputs=inputs.num_outputs,
               dtype=_dtype(m))


def _validate_transformer(config) -> None:
  m = config.model
  check_positive(config, "model.width", "model.layers", "model.heads")
  check_choice(config, "model.positions", ("learned", "rotary"))
  if m.width % m.heads:
    raise ConfigError(f"config.model.heads={m.heads} must divide config.model.width={m.width}")
  if m.positions == "rotary" and (m.width // m.heads) % 2:
    raise ConfigError(f"config.model.positions='rotary' needs an even head width, got "
                      f"{m.width // m.heads} (width {m.width} / heads {m.heads})")
  if config.data.name != "numpy_docs":
    raise ConfigError(f"config.model.name='transformer' is a language model: it needs token "
                      f"data (config.data.name='numpy_docs'), not '{config.data.name}'")


@MODELS.register("transformer", validate=_validate_transformer,
                 reads=("model.width", "model.layers", "model.heads", "model.positions",
                        "model.remat"))
def _transformer(m, inputs: ModelInputs) -> nn.Module:
  return Transformer(vocab_size=inputs.vocab_size, seq_len=inputs.seq_len, width=m.width,
                     layers=m.layers, heads=m.heads, positions=m.positions, dtype=_dtype(m),
                     remat=m.remat == "block")


def _validate_none(config) -> None:
  if config.data.name != "quadratic":
    raise ConfigError(f"config.model.name='none' only fits config.data.name='quadratic', "
                      f"not '{config.data.name}'")


MODELS.register("none", validate=_validate_none)(None)  # the quadratic's theta is the model


def build(model_config, inputs: ModelInputs) -> nn.Module:
  """The Flax module named by `config.model.name`, sized for `inputs`."""
  return MODELS.get(model_config.name)(model_config, inputs)


__all__ = ["MLP", "CNN1D", "CNN2D", "Transformer", "ModelInputs", "build"]
