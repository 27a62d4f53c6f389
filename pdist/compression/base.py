"""The compressor interface and error feedback, shared by every compressor.

A compressor works leaf by leaf (each parameter array's gradient on its own):

  init(leaf) -> state                       e.g. PowerSGD's warm-started Q; () for most
  compress(g, state, key) -> (c, state)     c: what the receiver reconstructs, shaped like g
  wire_bytes(shape) -> int                  the exact payload of one encoded leaf: values,
                                            indices, scales and headers, as sent

Error feedback (Seide et al. 2014; Stich et al. 2018; Karimireddy et al. 2019) keeps what
compression dropped and adds it to the next gradient:

  p = g + e;   c = C(p);   e' = p - c;   send c

so nothing is lost for good, only delayed: applied c + new residual e' == g + old residual e,
exactly. `compression_transform` turns a compressor into a local gradient-pipeline
transformation (per device in `sync`, per worker in `ps`), whose state is the residual and the
compressor's own state, checkpointed with the run.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pdist.pipeline import GradientTransformation

FLOAT_BYTES = 4
INDEX_BYTES = 4


class Compressor(NamedTuple):
  name: str
  init: Callable[[Any], Any]
  compress: Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
  wire_bytes: Callable[[tuple[int, ...]], int]


def dense_bytes(shape) -> int:
  """An uncompressed float32 leaf."""
  return FLOAT_BYTES * int(np.prod(shape, dtype=np.int64))


def stateless(name: str, compress, wire_bytes) -> Compressor:
  """A compressor without state: compress(g, key) -> c."""
  return Compressor(name, lambda leaf: (), lambda g, s, key: (compress(g, key), s), wire_bytes)


def tree_wire_bytes(compressor: Compressor, params) -> list[int]:
  """The payload of each leaf of `params` (arrays or ShapeDtypeStructs)."""
  return [int(compressor.wire_bytes(tuple(np.shape(x)))) for x in jax.tree.leaves(params)]


def _norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def compression_transform(compressor: Compressor, error_feedback: bool,
                          params) -> GradientTransformation:
  """The local pipeline stage: (optionally) add the residual, compress every leaf, keep what was
  dropped. Stats per update: bytes_up (this sender's payload), compression_ratio (dense bytes /
  bytes_up) and residual_norm (||e'||, 0 without error feedback)."""
  sent = sum(tree_wire_bytes(compressor, params))
  dense = sum(dense_bytes(np.shape(x)) for x in jax.tree.leaves(params))

  def init(p):
    state = {"compressor": [compressor.init(x) for x in jax.tree.leaves(p)]}
    if error_feedback:
      state["residual"] = jax.tree.map(jnp.zeros_like, p)
    return state

  def update(grads, state, params, rng):
    del params
    target = jax.tree.map(jnp.add, grads, state["residual"]) if error_feedback else grads
    leaves, treedef = jax.tree.flatten(target)
    out, new_states = [], []
    for i, (g, s) in enumerate(zip(leaves, state["compressor"])):
      c, s = compressor.compress(g, s, jax.random.fold_in(rng, i))
      out.append(c)
      new_states.append(s)
    compressed = jax.tree.unflatten(treedef, out)
    new = {"compressor": new_states}
    stats = {"bytes_up": jnp.float32(sent), "compression_ratio": jnp.float32(dense / sent)}
    if error_feedback:
      new["residual"] = jax.tree.map(jnp.subtract, target, compressed)
      stats["residual_norm"] = _norm(new["residual"])
    else:
      stats["residual_norm"] = jnp.float32(0.0)
    return compressed, new, stats

  return GradientTransformation(init, update)
