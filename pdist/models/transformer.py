"""A small decoder-only Transformer language model (GPT-style, pre-LayerNorm).

tokens [B, T] int -> logits [B, T, vocab]. Each block: x + attn(LN(x)), then x + MLP(LN(x)) with a
4x GELU MLP; causal multi-head self-attention, so position t sees positions <= t only. Positions
are `learned` (an embedding added to the tokens') or `rotary` (RoPE, Su et al. 2021: queries and
keys rotated by position-dependent angles inside attention, no position parameters). The output
layer is tied to the token embedding (its transpose), as in GPT-2.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def rotary(x: jnp.ndarray) -> jnp.ndarray:
  """RoPE on [B, T, heads, head_dim]: pairs of channels (i, i + d/2) rotated by t * 10000^(-2i/d)."""
  t, d = x.shape[1], x.shape[-1]
  half = d // 2
  freq = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = jnp.arange(t, dtype=jnp.float32)[:, None] * freq[None, :]       # [T, d/2]
  cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


class CausalSelfAttention(nn.Module):
  width: int
  heads: int
  positions: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, t, _ = x.shape
    head_dim = self.width // self.heads
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, name="qkv")(x).reshape(b, t, 3, self.heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.positions == "rotary":
      q, k = rotary(q), rotary(k)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(x.dtype)
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    weights = nn.softmax(scores.astype(jnp.float32), axis=-1).astype(x.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, self.width)
    return nn.Dense(self.width, dtype=self.dtype, name="out")(out)


class Block(nn.Module):
  width: int
  heads: int
  positions: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    attend = CausalSelfAttention(self.width, self.heads, self.positions, self.dtype)
    x = x + attend(nn.LayerNorm(dtype=self.dtype)(x))
    h = nn.Dense(4 * self.width, dtype=self.dtype)(nn.LayerNorm(dtype=self.dtype)(x))
    return x + nn.Dense(self.width, dtype=self.dtype)(nn.gelu(h))


class Transformer(nn.Module):
  vocab_size: int
  seq_len: int
  width: int = 128
  layers: int = 2
  heads: int = 4
  positions: str = "learned"   # learned / rotary
  dtype: Any = jnp.float32     # computation dtype; parameters stay float32
  remat: bool = False          # jax.checkpoint per block: its activations recomputed backward

  @nn.compact
  def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     dtype=self.dtype, name="embed")
    x = embed(tokens)
    if self.positions == "learned":
      pos = self.param("positions", nn.initializers.normal(0.02), (self.seq_len, self.width))
      x = x + pos[None, :tokens.shape[1]].astype(self.dtype)
    block = nn.remat(Block) if self.remat else Block
    for i in range(self.layers):   # named as without remat: the same parameter paths
      x = block(self.width, self.heads, self.positions, self.dtype, name=f"Block_{i}")(x)
    return embed.attend(nn.LayerNorm(dtype=self.dtype)(x)).astype(jnp.float32)
