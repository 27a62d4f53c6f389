"""Pipeline parallelism along the mesh axis `pipeline`: the GPipe schedule (Huang et al. 2019).

A model is cut into three parts (`parts`): `pre` (the transformer's embedding; the MLP's first
layer), L identical `blocks` (transformer blocks; the MLP's equal-width hidden layers) and `post`
(the final norm and tied output layer; the MLP's classifier). The blocks' parameters are stored
stacked, [L, ...] under the key STACKED, and sharded along `pipeline` on that leading dimension:
stage s of p holds blocks s L/p ... (s+1) L/p - 1 (and only those; `stack` / `unstack` convert
from and to the model's own parameter names, which evaluation and exported parameters keep).

The batch is cut into m micro-batches. The schedule runs m + p - 1 ticks; at each tick every
stage applies its blocks to what it holds, then the activations move one stage on (a shift
along the stage dimension, which XLA compiles to a collective-permute between neighbouring
devices); stage 0 takes micro-batch t at tick t, stage p - 1 emits micro-batch t - (p - 1).
The backward pass is this loop's transpose (the same ticks in reverse, activations' gradients
moving one stage back per tick): all forwards, then all backwards, GPipe's schedule. A stage
is idle at (p - 1) of its m + p - 1 ticks in each direction, the bubble (p - 1) / (m + p - 1);
the compiled step counts its busy slots itself (the `pipeline_bubble` metric), so a schedule
with too many ticks or a stage starved of input would show in the rows.

The loop is written for the whole mesh (jax.jit, GSPMD): a vmap over the stage dimension of
the stacked parameters and of the in-flight activations, both sharded along `pipeline`; `pre`
and `post` run replicated over the pipeline axis (each stage computes the embedding and the
output layer of its data shard; only stage 0's and the last stage's results are used). Data,
fsdp and tensor shardings of the blocks compose with it (layout.py's rules on the block's own
parameter names).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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
  """The pipeline's cut of a pdist model (the transformer, or an MLP whose hidden layers after
  the first have one width); other models are refused in one sentence."""
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


def _mlp_parts(m: MLP) -> Parts:
  hidden = tuple(m.hidden)
  if len(hidden) < 2 or len(set(hidden)) != 1:
    raise ConfigError("config.sync.mesh.pipeline > 1 with the MLP stacks its hidden layers after "
                      "the first as identical blocks: config.model.hidden must be two or more "
                      f"equal widths, got {list(hidden)}")
  width, n = hidden[0], len(hidden)
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


def bubble(stages: int, microbatches: int) -> float:
  """GPipe's idle fraction of each stage, (p - 1) / (m + p - 1) (Huang et al. 2019)."""
  return (stages - 1) / (microbatches + stages - 1)


def gpipe(block, stacked, x, stages: int, microbatches: int, constrain=lambda h: h):
  """GPipe over `stages` stages: the stacked blocks applied in order to every row of x.

  block(params_of_one_block, h) -> h; stacked: leaves [L, ...] (L a multiple of `stages`); x:
  [B, ...] with B a multiple of `microbatches`. Micro-batch k is rows k, k + m, k + 2m, ... (so
  each micro-batch is spread over the batch's data shards like the batch). `constrain(h)`
  places the in-flight activations [stages, B/m, ...] (the strategy's sharding: stages along
  `pipeline`, rows along the batch axes). Returns (y [B, ...], busy), busy the number of
  (stage, tick) slots that held a real micro-batch (m p when the schedule is right)."""
  p, m = stages, microbatches
  per_stage = jax.tree.map(lambda a: a.reshape((p, a.shape[0] // p) + a.shape[1:]), stacked)
  rows = x.shape[0] // m
  micro = jnp.swapaxes(x.reshape((rows, m) + x.shape[1:]), 0, 1)    # [m, B/m, ...]

  def stage(params, h):   # one stage: its L/p blocks in order
    return jax.lax.scan(lambda h, p_i: (block(p_i, h), None), h, params)[0]

  def tick(carry, t):
    held, valid, out, busy = carry
    # the activations move one stage on; stage 0 takes micro-batch t (zeros after the last)
    take = jnp.minimum(t, m - 1)
    first = jnp.where(t < m, jax.lax.dynamic_index_in_dim(micro, take, keepdims=False), 0)
    held = jnp.roll(held, 1, axis=0).at[0].set(first.astype(held.dtype))
    valid = jnp.roll(valid, 1).at[0].set(t < m)
    held = constrain(jax.vmap(stage)(per_stage, held))
    busy = busy + valid.sum()
    # the last stage's result is micro-batch t - (p - 1)
    k = t - (p - 1)
    slot = jnp.clip(k, 0, m - 1)
    keep = jax.lax.dynamic_index_in_dim(out, slot, keepdims=False)
    out = jax.lax.dynamic_update_index_in_dim(out, jnp.where(k >= 0, held[p - 1], keep), slot, 0)
    return (held, valid, out, busy), None

  held = constrain(jnp.zeros((p,) + micro.shape[1:], x.dtype))
  init = (held, jnp.zeros((p,), bool), jnp.zeros_like(micro), jnp.zeros((), jnp.int32))
  (_, _, out, busy), _ = jax.lax.scan(tick, init, jnp.arange(m + p - 1))
  y = jnp.swapaxes(out, 0, 1).reshape(x.shape[:1] + out.shape[2:])
  return y, busy
