"""What `local` and `gossip` share: one replica of the model per device of the data mesh.

The state holds every replica's parameters and inner-optimizer state stacked along a leading axis
of length N (the mesh's devices), sharded along `data`, so each device keeps and updates its own:

  {"step", "step_key", "replicas": {"params": [N, ...], "opt_state": [N, ...]}, ...strategy's own}

Each update every replica takes a step of config.optim on its 1/N slice of the global batch (the
slice `sync` gives that device); what the replicas then exchange is the strategy's. Each log row
is the mean over its updates and over the replicas (one scalar all-reduce a row, not one an
update), plus `consensus`: the mean over replicas of ||theta_i - mean_j theta_j|| at the row's
end. The host adds the strategy's `communication(step)`: `syncs`, `bytes_sent` and `sim_time`,
functions of the step alone, so a resumed run continues them exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from pdist import network as network_lib
from pdist import pipeline as pipeline_lib
from pdist.parallel import layout as layout_lib
from pdist.parallel import mesh as mesh_lib
from pdist.parallel.mesh import AXIS
from pdist.registry import ConfigError
from pdist.strategies import base
from pdist.strategies.base import PIPELINE_SALT
from pdist.strategies.sync import Sync

READS = network_lib.READS


def validate_mesh(config, name: str) -> None:
  """What a strategy with one replica per device cannot combine with, in one sentence each."""
  if config.sync.backend != "shard_map":
    raise ConfigError(f"config.strategy='{name}' runs on shard_map only; leave "
                      f"config.sync.backend='shard_map' (got '{config.sync.backend}')")
  if layout_lib.is_sharded(config):
    raise ConfigError(f"config.strategy='{name}' keeps one whole replica per device; leave "
                      "config.sync.mesh and config.sync.zero at their defaults (data only)")
  if config.privacy.mechanism != "none":
    raise ConfigError(f"config.strategy='{name}' does not combine with config.privacy: DP-SGD's "
                      "accounting here is for one noisy update of one model a step; use 'sync'")
  if name != "local" and config.compression.name != "none":
    raise ConfigError(f"config.strategy='{name}' does not combine with config.compression "
                      "(it exchanges parameters, not gradients); use 'sync' or 'local'")


def _varies(x) -> bool:
  """Whether x differs across the data axis (its shard_map check_vma type)."""
  return AXIS in jax.typeof(x).manual_axis_type.varying


def varying(tree):
  """`tree` marked as differing across the data axis (shard_map's check_vma types)."""
  return jax.tree.map(lambda x: x if _varies(x) else jax.lax.pcast(x, AXIS, to="varying"), tree)


def like(new, old):
  """`new` with the varying-ness of `old`, leaf by leaf (cond branches must agree on it)."""
  return jax.tree.map(lambda n, o: jax.lax.pcast(n, AXIS, to="varying")
                      if _varies(o) and not _varies(n) else n, new, old)


class Replicas(Sync):
  """Base of `local` and `gossip`; subclasses define update(), extra_state(), extra_specs() and
  communication() (whose fields Sync.host_metrics adds to each row)."""

  def __init__(self, config, task, pipeline=None):
    if pipeline is not None:
      raise ConfigError(f"config.strategy='{config.strategy}' builds its own exchange and takes "
                        "no gradient pipeline from another strategy")
    # the inner steps compute plain gradients: no pipeline between gradient and inner optimizer
    super().__init__(config, task, pipeline=pipeline_lib.empty())
    if self.num_devices < 2:
      raise ConfigError(f"config.strategy='{config.strategy}' keeps one replica per device and "
                        f"the mesh has {self.num_devices}; give it several, e.g. python -m pdist "
                        "--local_devices 8 ... (CPU devices) or python -m pdist.launch")
    self._mean_params = jax.jit(lambda r: jax.tree.map(lambda x: jnp.mean(x, axis=0), r),
                                out_shardings=self._replicated)

  # -- state -----------------------------------------------------------------------------------
  def extra_state(self, params) -> dict:
    return {}

  def extra_specs(self) -> dict:
    return {}

  def initial_state(self, rng):
    init_key, step_key = base.init_keys(rng)
    params = self.task.init(init_key)
    n = self.num_devices
    stack = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)
    return {"step": jnp.zeros((), jnp.int32), "step_key": step_key,
            "replicas": {"params": stack(params), "opt_state": stack(self.tx.init(params))},
            **self.extra_state(params)}

  def _specs(self):
    return {"step": P(), "step_key": P(), "replicas": P(AXIS), **self.extra_specs()}

  def shardings(self, state):
    specs = self._specs()

    def place(spec, sub):
      return jax.tree.map(lambda _: NamedSharding(self.mesh, spec), sub)

    return jax.tree.map(place, specs, state,
                        is_leaf=lambda x: isinstance(x, P))

  def params(self, state):
    """The parameters to evaluate: the outer ones by default (subclasses may differ)."""
    return mesh_lib.local_copy(state["params"])

  def replica_params(self, state, i: int = 0):
    """Replica i's parameters on the host's first device (i among this process's replicas)."""
    return jax.tree.map(lambda x: x.addressable_data(i)[0], state["replicas"]["params"])

  def mean_params(self, state):
    return mesh_lib.local_copy(self._mean_params(state["replicas"]["params"]))

  # -- inside shard_map --------------------------------------------------------------------------
  def my_replica(self, state):
    """(this device's parameters, its inner-optimizer state), from the [1, ...] blocks."""
    r = state["replicas"]
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    return first(r["params"]), first(r["opt_state"])

  def store_replica(self, state, params, opt_state):
    put = lambda new, old: like(jax.tree.map(lambda x: x[None], new), old)
    r = state["replicas"]
    return dict(state, replicas={"params": put(params, r["params"]),
                                 "opt_state": put(opt_state, r["opt_state"])})

  def _run_chunk(self, state, data, indices, num_updates: int, segments=None):
    """The updates of one call, a `lax.scan` per row; each row's metrics are the mean over its
    updates and the replicas, with the consensus distance at its end."""
    def body(state, idx):
      return self.update(state, base.gather_batch(data, idx))

    rows, start = [], 0
    for n in base.row_segments(num_updates, segments):
      idx = None if indices is None else jax.tree.map(lambda a: a[start:start + n], indices)
      state, per_step = jax.lax.scan(body, state, idx, length=n)
      metrics = jax.lax.pmean({k: jnp.mean(v) for k, v in per_step.items()}, AXIS)
      metrics["consensus"] = self._consensus(state)
      rows.append(metrics)
      start += n
    return state, (rows[0] if segments is None else rows)

  def _consensus(self, state):
    mine = jax.tree.map(lambda x: x[0], state["replicas"]["params"])
    mean = jax.lax.pmean(mine, AXIS)
    sq = sum(jnp.sum(jnp.square(a - b)) for a, b in zip(jax.tree.leaves(mine),
                                                         jax.tree.leaves(mean)))
    return jax.lax.pmean(jnp.sqrt(sq), AXIS)


__all__ = ["Replicas", "READS", "PIPELINE_SALT", "P", "like", "validate_mesh", "varying"]
