"""Pipeline parallelism along the mesh axis `pipeline`: the GPipe schedule (Huang et al. 2019).

A model is cut into three parts (`parts`): `pre` (the transformer's embedding; the MLP's first
layer), L identical `blocks` (transformer blocks; the MLP's equal-width hidden layers) and `post`
(the final norm and tied output layer; the MLP's classifier). The blocks' parameters are stored
stacked, [L, ...] under the key STACKED, and sharded along `pipeline` on that leading dimension:
stage s of p holds blocks s L/p ... (s+1) L/p - 1 (and only those; `stack` / `unstack` convert
from and to the model's own parameter names, which evaluation and exported parameters keep).

The batch is cut into m micro-batches. `schedule(p, m)` is the table of which micro-batch each
stage works on at each of the m + p - 1 ticks; `gpipe` runs it: at each tick every stage applies
its blocks to what it holds, then the activations move one stage on (a shift along the stage
dimension, which XLA compiles to a collective-permute between neighbouring devices); stage 0
takes micro-batch t at tick t, the last stage emits micro-batch t - (p - 1). The backward pass
is this loop's transpose (the same ticks in reverse, activations' gradients moving one stage
back per tick): all forwards, then all backwards, GPipe's schedule. A stage idles at p - 1 of
its m + p - 1 ticks in each direction: the table's idle slots, `bubble(schedule(p, m))`, equal
(p - 1) / (m + p - 1) (`bubble_theory`). The loop is one program for all stages (a vmap over
the stage dimension), so an idle slot is a stage computing on padding, as a real pipeline's
idle device would wait.

Placement (strategies/sync.py `Pipelined`): the stacked parameters, the in-flight activations
and the inputs / outputs by tick all carry the stage dimension along `pipeline`, so only the
shift communicates inside the loop; each data x fsdp shard runs its rows through the stages in
a shard_map, so the blocks' gradients add up over the ticks on the shard and are reduced once,
after the loop. `pre` and `post` run on every stage of a data shard (each stage computes the
embedding and the output layer of its rows; only stage 0's input and the last stage's output
are used): redundant compute, and with a large vocabulary memory, that a pipeline whose first
and last stages own them would not spend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pdist.models.mlp import MLP
from pdist.models.transformer import Block, Transformer
from pdist.parallel.layout import STACKED
from pdist.registry import ConfigError


@dataclasses.dataclass(frozen=True)
class Parts:
  """A model as pre -> L blocks -> post, on its plain parameter tree."""
  blocks: tuple[str, ...]                          # the blocks' parameter names, in order
  pre: Callable[[dict, jnp.ndarray], jnp.ndarray]  # (params without the blocks, x) -> h
  block: Callable[[Any, jnp.ndarray], jnp.ndarray]  # (one block's params, h) -> h
  post: Callable[[dict, jnp.ndarray], jnp.ndarray]  # (params without the blocks, h) -> output


def parts(module) -> Parts:
  """The pipeline's cut of a pdist model (the transformer, or an MLP whose hidden layers all
  have one width: the layers after the first are the blocks); other models are refused in one
  sentence."""
  if isinstance(module, Transformer):
    return _transformer_parts(module)
  if isinstance(module, MLP):
    return _mlp_parts(module)
  raise ConfigError("config.sync.mesh.pipeline > 1 cuts a model into stages of identical "
                    "blocks: it needs config.model.name='transformer' or 'mlp', not "
                    f"{type(module).__name__}")


def _transformer_parts(m: Transformer) -> Parts:
  embed = nn.Embed(m.vocab_size, m.width, dtype=m.dtype)
  block = (nn.remat(Block) if m.remat else Block)(m.width, m.heads, m.positions, m.dtype)
  norm = nn.LayerNorm(dtype=m.dtype)

  def pre(rest, tokens):
    x = embed.apply({"params": rest["embed"]}, tokens)
    if m.positions == "learned":
      x = x + rest["positions"][None, :tokens.shape[1]].astype(m.dtype)
    return x

  def post(rest, x):
    x = norm.apply({"params": rest["LayerNorm_0"]}, x)
    return embed.apply({"params": rest["embed"]}, x, method="attend").astype(jnp.float32)

  return Parts(tuple(f"Block_{i}" for i in range(m.layers)), pre,
               lambda p, x: block.apply({"params": p}, x), post)


def _mlp_blocks(hidden) -> int:
  """How many stacked blocks an MLP of these hidden widths has (refused unless all are equal)."""
  hidden = tuple(hidden)
  if len(hidden) < 2 or len(set(hidden)) != 1:
    raise ConfigError("config.sync.mesh.pipeline > 1 with the MLP stacks its hidden layers after "
                      "the first as identical blocks: config.model.hidden must be two or more "
                      f"equal widths, got {list(hidden)}")
  return len(hidden) - 1


def validate(config) -> None:
  """A pipeline's model checks, from the config alone (so that a sweep finds them before any
  run): a transformer or an MLP of equal widths, with a block count the stages divide."""
  stages = int(config.sync.mesh.pipeline)
  if stages in (0, 1):
    return
  m = config.model
  if m.name == "transformer":
    blocks = int(m.layers)
  elif m.name == "mlp":
    blocks = _mlp_blocks(m.hidden)
  else:
    raise ConfigError("config.sync.mesh.pipeline > 1 cuts a model into stages of identical "
                      "blocks: it needs config.model.name='transformer' or 'mlp', not "
                      f"'{m.name}'")
  check_blocks(stages, blocks)


def check_blocks(stages: int, blocks: int) -> None:
  if blocks % stages:
    raise ConfigError(f"config.sync.mesh.pipeline={stages} stages need a block count they "
                      f"divide; the model has {blocks} blocks")


def _mlp_parts(m: MLP) -> Parts:
  hidden = tuple(m.hidden)
  n = _mlp_blocks(hidden) + 1
  width = hidden[0]
  dense = nn.remat(nn.Dense) if m.remat else nn.Dense

  def pre(rest, x):
    x = x.reshape((x.shape[0], -1)).astype(m.dtype)
    return nn.relu(dense(width, dtype=m.dtype).apply({"params": rest["Dense_0"]}, x))

  def block(p, x):
    return nn.relu(dense(width, dtype=m.dtype).apply({"params": p}, x))

  def post(rest, x):
    out = nn.Dense(m.num_outputs, dtype=m.dtype).apply({"params": rest[f"Dense_{n}"]}, x)
    return out.astype(jnp.float32)

  return Parts(tuple(f"Dense_{i}" for i in range(1, n)), pre, block, post)


def stack(params: dict, names) -> dict:
  """The model's parameters with blocks `names` stacked under STACKED ([L, ...] leaves)."""
  out = {k: v for k, v in params.items() if k not in names}
  out[STACKED] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[n] for n in names])
  return out


def unstack(params: dict, names) -> dict:
  """The inverse of `stack`: the model's own parameter names."""
  out = {k: v for k, v in params.items() if k != STACKED}
  for i, n in enumerate(names):
    out[n] = jax.tree.map(lambda x, i=i: x[i], params[STACKED])
  return out


def schedule(stages: int, microbatches: int) -> np.ndarray:
  """GPipe's forward schedule as a table [ticks, stages]: the micro-batch stage s works on at
  tick t (t - s while 0 <= t - s < m), -1 where it idles. `gpipe` runs this table: it feeds
  stage 0's column and reads the last stage's."""
  t = np.arange(microbatches + stages - 1)[:, None] - np.arange(stages)[None, :]
  return np.where((t >= 0) & (t < microbatches), t, -1)


def bubble(table: np.ndarray) -> float:
  """The idle fraction of a schedule table: its -1 slots over all (tick, stage) slots."""
  return float((table < 0).mean())


def bubble_theory(stages: int, microbatches: int) -> float:
  """GPipe's idle fraction of each stage, (p - 1) / (m + p - 1) (Huang et al. 2019)."""
  return (stages - 1) / (microbatches + stages - 1)


def gpipe(block, stacked, x, stages: int, microbatches: int,
          constrain=lambda a, stage_dim: a):
  """GPipe over `stages` stages: the stacked blocks applied in order to every row of x.

  block(params_of_one_block, h) -> h; stacked: leaves [L, ...] (L a multiple of `stages`); x:
  [B, ...] with B a multiple of `microbatches`. Micro-batch k is rows k, k + m, k + 2m, ... (so
  each micro-batch is spread over the batch's data shards like the batch). The ticks follow
  `schedule(p, m)`. Every array with a stage dimension (the in-flight activations [p, B/m, ...],
  the inputs and outputs by tick [ticks, p, B/m, ...]) is placed by `constrain(a, stage_dim)`
  (the strategy's sharding: that dimension along `pipeline`), so a stage's inputs and outputs
  stay on its devices and only the shift between neighbours communicates inside the loop."""
  p, m = stages, microbatches
  table = schedule(p, m)
  ticks = table.shape[0]
  per_stage = jax.tree.map(lambda a: a.reshape((p, a.shape[0] // p) + a.shape[1:]), stacked)
  rows = x.shape[0] // m
  micro = jnp.swapaxes(x.reshape((rows, m) + x.shape[1:]), 0, 1)    # [m, B/m, ...]
  # stage 0's column of the table: micro-batch table[t, 0] enters at tick t (zeros when idle)
  fed = np.nonzero(table[:, 0] >= 0)[0]
  feed = jnp.zeros((ticks, p) + micro.shape[1:], x.dtype)
  feed = constrain(feed.at[fed, 0].set(micro[table[fed, 0]]), 1)
  first = (np.arange(p) == 0).reshape((p,) + (1,) * (micro.ndim - 1))

  def stage(params, h):   # one stage: its L/p blocks in order
    return jax.lax.scan(lambda h, p_i: (block(p_i, h), None), h, params)[0]

  def tick(held, feed_t):
    # the activations move one stage on; stage 0 takes this tick's input instead
    held = jnp.where(first, feed_t, jnp.roll(held, 1, axis=0))
    held = constrain(jax.vmap(stage)(per_stage, held), 0)
    return held, held

  held = constrain(jnp.zeros((p,) + micro.shape[1:], x.dtype), 0)
  _, outs = jax.lax.scan(tick, held, feed)            # [ticks, p, B/m, ...]
  outs = constrain(outs, 1)
  # the last stage's column: micro-batch table[t, p - 1] leaves at tick t
  done = np.nonzero(table[:, p - 1] >= 0)[0]
  done = done[np.argsort(table[done, p - 1])]
  y = outs[done, p - 1]                                 # [m, B/m, ...] in micro-batch order
  return jnp.swapaxes(y, 0, 1).reshape(x.shape[:1] + y.shape[2:])
