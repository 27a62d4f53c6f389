"""Training strategies: one protocol (base.Strategy), one registered class per training mode.

Adding a strategy is one new module here that registers its class with `registry.STRATEGIES`
(with its config group and checks), plus its import line below.
"""

from __future__ import annotations

from pdist.registry import STRATEGIES
from pdist.strategies import (codistill, federated, gossip, local, ps, single,  # noqa: F401
                              sync)  # (each registers itself)
from pdist.strategies.base import Strategy
from pdist.strategies.seeds import Seeds


def build(config, task, pipeline=None) -> Strategy:
  """The strategy named by `config.strategy`, for `task` (and an optional gradient pipeline);
  with config.train.seeds > 1, that many vmapped copies of it (see seeds.py)."""
  if config.train.seeds > 1:
    return Seeds(config, task, pipeline=pipeline)
  return STRATEGIES.get(config.strategy)(config, task, pipeline=pipeline)


__all__ = ["Strategy", "build"]
