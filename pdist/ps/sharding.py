"""Splitting the parameters over server shards, and applying a gradient shard by shard.

Leaves are assigned to shards greedily by size (largest first, to the lightest shard), so shard
byte counts are balanced; a leaf is never split. Each shard keeps its own optimizer state and its
own version counter. For element-wise optimizers (sgd, momentum, adam, adamw) shard-wise updates
equal the whole-model update exactly; global-norm clipping becomes per-shard clipping.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
import optax

from pdist.optim import apply_gradient
from pdist.registry import ConfigError


def partition_leaves(params, num_shards: int) -> list[list[int]]:
  """Leaf indices per shard, balanced by bytes; each shard gets at least one leaf."""
  leaves = jax.tree.leaves(params)
  if num_shards > len(leaves):
    raise ConfigError(f"config.ps.shards={num_shards} but the model has only {len(leaves)} "
                      "parameter arrays (leaves) to split over shards")
  sizes = [leaf_bytes(x) for x in leaves]
  load = [0] * num_shards
  shards: list[list[int]] = [[] for _ in range(num_shards)]
  for i in sorted(range(len(leaves)), key=lambda i: (-sizes[i], i)):
    s = min(range(num_shards), key=lambda s: (load[s], s))
    shards[s].append(i)
    load[s] += sizes[i]
  return [sorted(s) for s in shards]


def leaf_bytes(x) -> int:
  """Bytes of one array or shape struct (Python ints: a huge model's count cannot overflow)."""
  return math.prod(np.shape(x)) * np.dtype(x.dtype).itemsize


def tree_bytes(params) -> int:
  """Bytes of every leaf of a pytree (arrays or shape structs): what sending it costs."""
  return sum(leaf_bytes(x) for x in jax.tree.leaves(params))


def shard_bytes(params, shards: Sequence[Sequence[int]]) -> list[int]:
  leaves = jax.tree.leaves(params)
  return [sum(leaf_bytes(leaves[i]) for i in s) for s in shards]


def init_opt_states(tx: optax.GradientTransformation, params, shards) -> list[Any]:
  leaves = jax.tree.leaves(params)
  return [tx.init([leaves[i] for i in s]) for s in shards]


def apply_sharded(tx: optax.GradientTransformation, params, opt_states: list, grads, shards,
                  scale=1.0, only: Sequence[int] | None = None):
  """Each shard s applies its slice of `grads` (times `scale`) with its own optimizer state.

  `only` restricts the update to some shards (the others keep parameters and state).
  """
  leaves, treedef = jax.tree.flatten(params)
  grad_leaves = jax.tree.leaves(grads)
  new_states = list(opt_states)
  for s, ids in enumerate(shards):
    if only is not None and s not in only:
      continue
    sub_params = [leaves[i] for i in ids]
    sub_grads = [grad_leaves[i] * scale for i in ids]
    sub_params, new_states[s] = apply_gradient(tx, sub_params, opt_states[s], sub_grads)
    for i, p in zip(ids, sub_params):
      leaves[i] = p
  return jax.tree.unflatten(treedef, leaves), new_states
