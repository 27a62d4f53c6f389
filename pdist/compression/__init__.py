"""Communication compression: what a device or worker sends instead of its full gradient.

    --config.compression.name=topk --config.compression.ratio=0.01   # error feedback on by default

Compressors, one per file, each with its math, paper and guarantee: int8 (stochastic rounding),
qsgd (s levels), topk, randomk, sign (scaled, 1 bit), powersgd (rank r, warm-started). The
sparsifiers (topk, randomk) choose their k values from the whole gradient
(`config.compression.scope="global"`, the default, as Stich et al. 2018 and Lin et al. 2018) or
from each leaf on its own (`scope="leaf"`). With `config.compression.error_feedback` (default
on) what compression drops is carried to the next gradient (base.py). The compressor runs in the
local stage of the gradient pipeline, so in `sync` each device compresses its own gradient before
the (emulated) exchange, with its own residual, and in `ps` each worker compresses its push, with
its own residual; the pushed bytes drive the simulated network time. `single` sends nothing and
is refused.

Metrics per row (means over the interval's updates; defined in base.py): bytes_up (one sender's
payload per update, values and indices), compression_ratio (dense float32 bytes / bytes_up),
kept_fraction (coordinates whose value is sent / coordinates; not for powersgd), residual_norm
(error feedback's memory, ||e||).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from pdist.compression import base, int8, powersgd, qsgd, randomk, sign, topk
from pdist.compression.base import SCOPES, Compressor, compression_transform, tree_wire_bytes
from pdist.registry import COMPRESSORS, ConfigError, check_choice, check_unused_at_default


def compression_config() -> ml_collections.ConfigDict:
  """config.compression (fields other than name must stay default with name none)."""
  c = ml_collections.ConfigDict()
  c.name = "none"            # none / int8 / qsgd / topk / randomk / sign / powersgd
  c.error_feedback = True    # carry what compression drops into the next gradient
  c.ratio = 0.01             # topk, randomk: share of the scope's values sent, in (0, 1]
  c.scope = "global"         # topk, randomk: k of the whole gradient ("global") or of each leaf
  c.levels = 16              # qsgd: quantisation levels s >= 1
  c.rank = 4                 # powersgd: rank r >= 1
  return c


def _validate_none(config) -> None:
  check_unused_at_default(config, "compression", compression_config(), "name",
                          "choose a compressor or leave the field at its default")


# the fields of config.compression each compressor reads; any other must stay at its default
READS = {"int8": ("error_feedback",), "qsgd": ("error_feedback", "levels"),
         "topk": ("error_feedback", "ratio", "scope"),
         "randomk": ("error_feedback", "ratio", "scope"), "sign": ("error_feedback",),
         "powersgd": ("error_feedback", "rank")}


def _validate_any(config) -> None:
  name = config.compression.name
  if config.strategy == "single":
    raise ConfigError(f"config.compression.name='{name}' compresses what a strategy sends, and "
                      "config.strategy='single' sends nothing; use sync, ps or local")
  if config.strategy not in ("sync", "ps", "local"):
    raise ConfigError(f"config.compression.name='{name}' does not apply to "
                      f"config.strategy='{config.strategy}'; it compresses sync's and ps's "
                      "gradients and local's outer gradients")
  if getattr(config, "privacy", None) is not None and config.privacy.mechanism != "none":
    raise ConfigError("config.compression with config.privacy.mechanism='dpsgd' is not supported: "
                      "error feedback carries private gradients across steps, outside DP-SGD's "
                      "analysis")
  for field, default in compression_config().items():
    if field != "name" and field not in READS[name] and config.compression[field] != default:
      raise ConfigError(f"config.compression.{field}={config.compression[field]!r} does not apply "
                        f"to config.compression.name='{name}' (it reads "
                        f"{', '.join(READS[name])}); leave it at {default!r}")


def _validate_sparsifier(config) -> None:
  _validate_any(config)
  r = config.compression.ratio
  if not 0 < r <= 1:
    raise ConfigError(f"config.compression.ratio must be in (0, 1], got {r}")
  check_choice(config, "compression.scope", SCOPES)
  if config.compression.scope == "global" and config.strategy == "ps" and config.ps.shards > 1:
    raise ConfigError(f"config.compression.scope='global' with config.ps.shards="
                      f"{config.ps.shards} is not supported: which shard the whole gradient's k "
                      "values go to changes every step, and the simulated network needs each "
                      "shard's bytes in advance; use scope='leaf' or one shard")


def _validate_levels(config) -> None:
  _validate_any(config)
  if config.compression.levels < 1:
    raise ConfigError(f"config.compression.levels must be at least 1, got "
                      f"{config.compression.levels}")


def _validate_rank(config) -> None:
  _validate_any(config)
  if config.compression.rank < 1:
    raise ConfigError(f"config.compression.rank must be at least 1, got {config.compression.rank}")


def _stage(make, check=None):
  """The registry entry: config, params -> (local transformation, per-leaf wire bytes)."""
  def build(config, params):
    compressor = make(config)
    if check is not None:
      check(config, params)
    transform = compression_transform(compressor, config.compression.error_feedback, params)
    return transform, lambda p: tree_wire_bytes(compressor, p)
  return build


def _rank_fits(config, params) -> None:
  sides = [min(powersgd.as_matrix(np.shape(x))) for x in _leaves(params)
           if powersgd.as_matrix(np.shape(x))]
  if not sides or config.compression.rank >= max(sides):
    raise ConfigError(f"config.compression.rank={config.compression.rank} compresses no layer: "
                      f"it must be below the smaller side of some weight matrix (largest such "
                      f"side here: {max(sides) if sides else 0})")


def _leaves(params):
  import jax
  return jax.tree.leaves(params)


COMPRESSORS.register("none", config=compression_config, validate=_validate_none,
                     group="compression")(None)
COMPRESSORS.register("int8", validate=_validate_any)(_stage(int8.make))
COMPRESSORS.register("qsgd", validate=_validate_levels)(_stage(qsgd.make))
COMPRESSORS.register("topk", validate=_validate_sparsifier)(_stage(topk.make))
COMPRESSORS.register("randomk", validate=_validate_sparsifier)(_stage(randomk.make))
COMPRESSORS.register("sign", validate=_validate_any)(_stage(sign.make))
COMPRESSORS.register("powersgd", validate=_validate_rank)(_stage(powersgd.make, _rank_fits))

__all__ = ["Compressor", "compression_config", "compression_transform", "base", "int8", "qsgd",
           "topk", "randomk", "sign", "powersgd"]
