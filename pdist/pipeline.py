"""The gradient pipeline: what happens between "gradient computed" and "gradient applied".

A pipeline is two chains of stateful gradient transformations, written in the optax style:

  init(params) -> state
  update(grads, state, params, rng) -> (grads, state, stats)

`stats` is a dict of scalars for this step (for example the fraction of gradients clipped); the
strategy averages them over a log interval like the loss. The two chains differ in *where* they
run and where their state lives:

  local     where a gradient is computed, before it is aggregated or sent: per device in `sync`
            (state sharded along the mesh axis, one slice per device), per worker in `ps` (state
            stacked over workers, updated when that worker's push is applied), and once in
            `single`. `params` is None here: a worker's local view of the parameters is not the
            same thing in every strategy, so local transformations must not depend on it.
  central   where the update is applied, after aggregation (the all-reduce in `sync`, the server
            in `ps`), with the current parameters; its state is global.

A strategy keeps `{"local": ..., "central": ...}` in its state pytree under "pipeline", so it is
checkpointed and resumed with everything else. An empty pipeline (the default) changes nothing:
every strategy then trains exactly as plain SGD with its optimizer. Later components (compressors
with error feedback, DP noise) register transformations that `build(config)` places in a chain.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax

from pdist.registry import COMPRESSORS

State = Any


class GradientTransformation(NamedTuple):
  """A stateful gradient transformation (optax style, plus per-step statistics)."""
  init: Callable[[Any], State]
  update: Callable[[Any, State, Any, jax.Array], tuple[Any, State, dict[str, jax.Array]]]


def identity() -> GradientTransformation:
  """Leaves gradients unchanged; no state, no statistics."""
  return GradientTransformation(lambda params: (), lambda g, s, params, rng: (g, s, {}))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
  """Applies `transforms` in order; the state is the tuple of their states, stats are merged.

  Each transformation gets its own rng, `fold_in(rng, position)`, so adding one to a chain does not
  change the randomness of the others.
  """
  if not transforms:
    return identity()

  def init(params):
    return tuple(t.init(params) for t in transforms)

  def update(grads, state, params, rng):
    new_state, stats = [], {}
    for i, (t, s) in enumerate(zip(transforms, state)):
      key = None if rng is None else jax.random.fold_in(rng, i)
      grads, s, st = t.update(grads, s, params, key)
      new_state.append(s)
      stats.update(st)
    return grads, tuple(new_state), stats

  return GradientTransformation(init, update)


class Pipeline(NamedTuple):
  """The local chain (before aggregation) and the central chain (after it).

  `wire_bytes(params) -> [bytes per leaf]` is what one sender puts on the wire for a gradient
  after the local chain (None: the dense float32 leaves).
  """
  local: GradientTransformation
  central: GradientTransformation
  wire_bytes: Callable[[Any], list[int]] | None = None

  @property
  def local_is_identity(self) -> bool:
    """True when nothing runs before aggregation (a strategy may then aggregate first)."""
    return self.local is IDENTITY

  def with_central(self, transform: GradientTransformation) -> "Pipeline":
    """This pipeline with `transform` appended to the central chain."""
    central = transform if self.central is IDENTITY else chain(self.central, transform)
    return Pipeline(self.local, central, self.wire_bytes)

  def push_bytes(self, params, shards: Sequence[Sequence[int]]) -> list[int] | None:
    """Bytes of one worker's push per server shard (leaf indices per shard) after compression;
    None when nothing compresses (a push is then the size of the parameters)."""
    if self.wire_bytes is None:
      return None
    per_leaf = self.wire_bytes(params)
    return [sum(per_leaf[i] for i in shard) for shard in shards]


IDENTITY = identity()


def empty() -> Pipeline:
  """No transformation anywhere: plain training."""
  return Pipeline(IDENTITY, IDENTITY)


def build(config, params) -> Pipeline:
  """The pipeline `config` asks for, for parameters shaped like `params`: the compressor of
  config.compression in the local stage (DP-SGD's noise is added by the strategy, which knows
  the data's size)."""
  stage = COMPRESSORS.get(config.compression.name) if "compression" in config else None
  if stage is None:
    return empty()
  local, wire_bytes = stage(config, params)
  return Pipeline(local, IDENTITY, wire_bytes)


def init_state(pipeline: Pipeline, params, copies: int = 0) -> dict:
  """{"local": ..., "central": ...}; with `copies` > 0 the local state is stacked that many times
  along a new leading axis (one per device or worker)."""
  local = pipeline.local.init(params)
  if copies:
    local = jax.tree.map(lambda x: jax.numpy.broadcast_to(x, (copies,) + x.shape), local)
  return {"local": local, "central": pipeline.central.init(params)}
