"""The compressor interface and error feedback, shared by every compressor.

A compressor encodes one *unit* at a time:

  init(unit) -> state                       e.g. PowerSGD's warm-started Q; () for most
  compress(g, state, key) -> (c, state)     c: what the receiver reconstructs, shaped like g
  wire_bytes(shape) -> int                  the exact payload of one encoded unit: values,
                                            indices, scales and headers, as sent
  sent_values(shape) -> int | None          how many of the unit's coordinates have their value
                                            sent (k for a sparsifier, all for a quantiser); None
                                            for a compressor that sends no coordinates (PowerSGD
                                            sends factors)
  scope                                     what a unit is: "leaf" = each parameter array's
                                            gradient on its own (an array); "global" = the whole
                                            gradient, the list of its leaves read as one vector
                                            (every leaf flattened, concatenated in
                                            jax.tree.leaves order), whose shape for wire_bytes
                                            and sent_values is (total values,)

With scope "global" a sparsifier picks its k coordinates from the whole gradient (Stich et al.
2018 analyse top-k and random-k on the whole vector; Deep Gradient Compression, Lin et al. 2018,
likewise), so a small ratio is not rounded up to one value in every leaf; its indices are
positions in the concatenated vector. (The leaves are not actually concatenated: XLA on CPU
copied a concatenated gradient so slowly that it cost more than the top-k; topk.py selects
across the leaves instead.)

Error feedback (Seide et al. 2014; Stich et al. 2018; Karimireddy et al. 2019) keeps what
compression dropped and adds it to the next gradient:

  p = g + e;   c = C(p);   e' = p - c;   send c

so nothing is lost for good, only delayed: applied c + new residual e' == g + old residual e,
exactly. `compression_transform` turns a compressor into a local gradient-pipeline
transformation (per device in `sync`, per worker in `ps`), whose state is the residual and the
compressor's own state, checkpointed with the run.

Stats per update (the compression stage's fields of a metrics row):

  bytes_up            one sender's payload: the sum of wire_bytes over the units
  compression_ratio   dense bytes / bytes_up, dense = 4 bytes (float32) per gradient value; the
                      payload counts everything sent, so for top-k the int32 indices too (k
                      values cost 8k bytes: ratio 0.01 is about 50x, not 100x)
  kept_fraction       coordinates whose value is sent / coordinates in the gradient (top-k at
                      ratio 0.01 over the whole gradient: about 0.01; 1 for the quantisers; not
                      reported for PowerSGD)
  residual_norm       ||e'||, error feedback's memory (0 without it)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pdist.pipeline import GradientTransformation

FLOAT_BYTES = 4
INDEX_BYTES = 4      # a sparsifier's index: int32, one per value sent, whatever the unit's size
SCOPES = ("global", "leaf")


class Compressor(NamedTuple):
  name: str
  init: Callable[[Any], Any]
  compress: Callable[[Any, Any, jax.Array], tuple[Any, Any]]   # a unit: an array, or a list
  wire_bytes: Callable[[tuple[int, ...]], int]
  sent_values: Callable[[tuple[int, ...]], int] | None = None
  scope: str = "leaf"


def size(shape) -> int:
  return int(np.prod(shape, dtype=np.int64))


def dense_bytes(shape) -> int:
  """An uncompressed float32 leaf."""
  return FLOAT_BYTES * size(shape)


def all_values(shape) -> int:
  """`sent_values` of a quantiser: every coordinate is sent (in fewer bits)."""
  return size(shape)


def stateless(name: str, compress, wire_bytes, sent_values=None, scope: str = "leaf") -> Compressor:
  """A compressor without state: compress(g, key) -> c."""
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
  return Compressor(name, lambda unit: (), lambda g, s, key: (compress(g, key), s), wire_bytes,
                    sent_values, scope)


def unit_shapes(compressor: Compressor, params) -> list[tuple[int, ...]]:
  """The shapes of the arrays `compressor` encodes one by one for a gradient shaped like
  `params`: each leaf's, or (scope global) the one concatenated vector's."""
  shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(params)]
  return shapes if compressor.scope == "leaf" else [(sum(size(s) for s in shapes),)]


def tree_wire_bytes(compressor: Compressor, params) -> list[int]:
  """The payload of each leaf of `params` (arrays or ShapeDtypeStructs). With scope "global" the
  payload is one message over the whole gradient: its bytes are all attributed to the first leaf
  (the sum is exact; how a step's k values fall across leaves changes every step, which is why
  `ps` refuses global scope with several server shards)."""
  per_unit = [int(compressor.wire_bytes(s)) for s in unit_shapes(compressor, params)]
  if compressor.scope == "leaf":
    return per_unit
  return per_unit + [0] * (len(jax.tree.leaves(params)) - 1)


def _to_units(scope: str, leaves: list) -> list:
  return leaves if scope == "leaf" else [list(leaves)]


def _from_units(scope: str, units: list) -> list:
  return units if scope == "leaf" else units[0]


def _norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def compression_transform(compressor: Compressor, error_feedback: bool,
                          params) -> GradientTransformation:
  """The local pipeline stage: (optionally) add the residual, compress every unit (each leaf, or
  the whole gradient), keep what was dropped. Stats per update: bytes_up, compression_ratio,
  kept_fraction (unless the compressor sends no coordinates) and residual_norm, as defined in
  this module's docstring."""
  units = unit_shapes(compressor, params)
  sent = sum(int(compressor.wire_bytes(s)) for s in units)
  values = sum(size(s) for s in units)
  constant_stats = {"bytes_up": sent, "compression_ratio": FLOAT_BYTES * values / sent}
  if compressor.sent_values is not None:
    constant_stats["kept_fraction"] = sum(int(compressor.sent_values(s)) for s in units) / values
  scope = compressor.scope

  def init(p):
    state = {"compressor": [compressor.init(u) for u in _to_units(scope, jax.tree.leaves(p))]}
    if error_feedback:
      state["residual"] = jax.tree.map(jnp.zeros_like, p)
    return state

  def update(grads, state, params, rng):
    del params
    target = jax.tree.map(jnp.add, grads, state["residual"]) if error_feedback else grads
    leaves, treedef = jax.tree.flatten(target)
    out, new_states = [], []
    for i, (g, s) in enumerate(zip(_to_units(scope, leaves), state["compressor"])):
      c, s = compressor.compress(g, s, jax.random.fold_in(rng, i))
      out.append(c)
      new_states.append(s)
    compressed = jax.tree.unflatten(treedef, _from_units(scope, out))
    new = {"compressor": new_states}
    stats = {k: jnp.float32(v) for k, v in constant_stats.items()}
    if error_feedback:
      new["residual"] = jax.tree.map(jnp.subtract, target, compressed)
      stats["residual_norm"] = _norm(new["residual"])
    else:
      stats["residual_norm"] = jnp.float32(0.0)
    return compressed, new, stats

  return GradientTransformation(init, update)
