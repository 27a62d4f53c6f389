"""Flax (linen) models. Every model is used through `init(rng, x) -> params` and
`apply(params, x) -> outputs` on plain parameter pytrees, so every strategy can vmap, scan and
shard_map over them unchanged."""

from __future__ import annotations

import flax.linen as nn

from pdist.config import ConfigError
from pdist.models.cnn import CNN1D, CNN2D
from pdist.models.mlp import MLP


def build(model_config, num_outputs: int) -> nn.Module:
  """The Flax module named by `config.model.name`."""
  name = model_config.name
  hidden = tuple(model_config.hidden)
  if name == "mlp":
    return MLP(hidden=hidden, num_outputs=num_outputs)
  if name == "linear":
    return MLP(hidden=(), num_outputs=num_outputs)
  if name == "cnn1d":
    return CNN1D(channels=hidden, kernel=model_config.kernel, num_outputs=num_outputs)
  if name == "cnn2d":
    return CNN2D(channels=hidden, kernel=min(model_config.kernel, 3), num_outputs=num_outputs)
  raise ConfigError(f"config.model.name='{name}' is not a known model")


__all__ = ["MLP", "CNN1D", "CNN2D", "build"]
