"""Training strategies: one protocol (base.Strategy), one class per training mode."""

from __future__ import annotations

from pdist.config import ConfigError
from pdist.strategies.base import Strategy
from pdist.strategies.single import Single


def build(config, task) -> Strategy:
  """The strategy named by `config.strategy`, for `task`."""
  if config.strategy == "single":
    return Single(config, task)
  if config.strategy == "sync":
    from pdist.parallel.sync import Sync
    return Sync(config, task)
  if config.strategy == "ps":
    from pdist.ps.strategy import ParameterServerStrategy
    return ParameterServerStrategy(config, task)
  raise ConfigError(f"config.strategy='{config.strategy}' is not a known strategy")


__all__ = ["Strategy", "Single", "build"]
