"""`sync`: synchronous data-parallel SGD over the devices of a mesh.

Each of the N devices takes its contiguous 1/N slice of the global batch (the same global batch,
from the same sampler, that `single` uses), computes the gradient of its slice's mean loss, and the
gradients are averaged across devices (an all-reduce, `lax.pmean`), so every device applies the
identical update theta <- theta - lr * mean_i(grad_i). With equal slices the mean of the slice
means is the global batch's mean: the computation is `single`'s, spread over devices.

Two implementations, checked against each other and against `single` in tests/test_sync.py:
- `shard_map` (default): jit of `jax.shard_map` over the `data` axis; parameters and optimizer
  state are replicated (P()), batch indices sharded along the batch axis.
  Sharp edge (see STACK.md): inside shard_map with check_vma, the gradient with respect to a
  replicated input is already summed over the axis, so pmean(grad) would be N times too large.
  We take the gradient with respect to `pcast(params, to="varying")` instead, so each device's
  gradient is its own, and then pmean.
- `pmap`: the older API, with parameters stacked along a leading device axis for each chunk.

Updates run in chunks (a `lax.scan` of a log interval inside one compiled call) and the host
blocks on each chunk's metrics, which also keeps collectives from piling up (STACK.md, trap 2).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from pdist.config import ConfigError
from pdist.parallel import mesh as mesh_lib
from pdist.parallel.mesh import AXIS
from pdist.strategies.single import Single


class Sync(Single):
  name = "sync"

  def __init__(self, config, task):
    self.mesh = mesh_lib.data_mesh(config.sync.devices)
    self.num_devices = self.mesh.devices.size
    self.backend = config.sync.backend
    if self.backend == "pmap" and jax.process_count() > 1:
      raise ConfigError("config.sync.backend='pmap' runs in one process; use 'shard_map' "
                        "with several processes")
    b, a = config.data.batch_size, config.optim.accumulate_steps
    if b % self.num_devices:
      raise ConfigError(f"config.data.batch_size={b} is not divisible by the {self.num_devices} "
                        "devices of the data-parallel mesh")
    if (b // self.num_devices) % a:
      raise ConfigError(f"the per-device batch {b // self.num_devices} is not divisible by "
                        f"config.optim.accumulate_steps={a}")
    self._replicated = mesh_lib.replicated(self.mesh)
    self._indices_sharding = NamedSharding(self.mesh, P(None, AXIS))
    super().__init__(config, task, device=self.mesh.devices.flat[0])
    if self.backend == "shard_map":
      self._chunk = jax.jit(self._sharded_chunk, static_argnums=(3,), donate_argnums=(0,))
    else:
      self._pmapped = {}

  def place_data(self, host: dict):
    """A copy of the training set on every device (stacked for pmap, replicated otherwise)."""
    if self.backend == "pmap":
      return jax.tree.map(self._stack_on_devices, host)
    return jax.device_put(host, self._replicated)

  # -- the math on one device ------------------------------------------------------------------
  def gradients(self, params, batch, rng):
    # differentiate this device's copy (varying), not the replicated value: see the module doc
    if self.backend == "shard_map":
      params = jax.lax.pcast(params, AXIS, to="varying")
    grads, (loss, aux) = self._grad(params, batch, rng)
    grads = jax.lax.pmean(grads, AXIS)
    loss, aux = jax.lax.pmean((loss, aux), AXIS)
    return grads, (loss, aux)

  def _sharded_chunk(self, state, data, indices, num_updates: int):
    chunk = jax.shard_map(functools.partial(self._run_chunk, num_updates=num_updates),
                          mesh=self.mesh, in_specs=(P(), P(), P(None, AXIS)),
                          out_specs=(P(), P()), check_vma=True)
    return chunk(state, data, indices)

  # -- host side -------------------------------------------------------------------------------
  def init(self, rng):
    # through host memory: every process computes the same values, and a global array is built
    # from each process's own copy (no cross-process transfer)
    return jax.device_put(jax.device_get(self.initial_state(rng)), self._replicated)

  def params(self, state):
    return mesh_lib.local_copy(state["params"])

  def run(self, state, num_updates: int):
    idx = self.indices(self.step(state), num_updates)
    if self.backend == "shard_map":
      if idx is not None:
        idx = jax.device_put(idx, self._indices_sharding)
      state, metrics = self._chunk(state, self.data, idx, num_updates)
      return state, {k: float(v) for k, v in jax.device_get(metrics).items()}
    return self._run_pmap(state, idx, num_updates)

  def _stack_on_devices(self, x):
    """One copy of host array x per device, as a [devices, ...] array (pmap's layout)."""
    devices = list(self.mesh.devices.flat)
    return jax.make_array_from_single_device_arrays(
        (len(devices),) + x.shape, NamedSharding(self.mesh, P(AXIS)),
        [jax.device_put(x[None], d) for d in devices])

  def _run_pmap(self, state, idx, num_updates: int):
    n = self.num_devices
    if num_updates not in self._pmapped:
      self._pmapped[num_updates] = jax.pmap(
          lambda s, d, i: self._run_chunk(s, d, i, num_updates), axis_name=AXIS,
          devices=list(self.mesh.devices.flat))
    stacking = NamedSharding(self.mesh, P(AXIS))
    stacked = jax.tree.map(
        lambda x: jax.device_put(jnp.broadcast_to(x, (n,) + x.shape), stacking), state)
    if idx is not None:  # [steps, B] -> [devices, steps, B/devices]: device d gets slice d
      idx = jax.device_put(idx.reshape(idx.shape[0], n, -1).transpose(1, 0, 2), stacking)
    out, metrics = self._pmapped[num_updates](stacked, self.data, idx)
    state = jax.device_put(jax.tree.map(lambda x: x[0], out), self._replicated)
    return state, {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
