"""The data-parallel mesh: one `data` axis over the first N devices of all processes."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pdist.registry import ConfigError

AXIS = "data"


def data_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh named `data` over `num_devices` devices (0 = every device of every process).

  jax.devices() lists the devices of all processes, process by process, so with several processes
  the mesh spans all of them and each process owns a contiguous block of the `data` axis.
  """
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ConfigError(f"config.sync.devices={n} but only {len(devices)} devices are visible "
                      f"({jax.process_count()} process(es) x {jax.local_device_count()} devices)")
  if jax.process_count() > 1 and n != len(devices):
    raise ConfigError(f"config.sync.devices={n}: with {jax.process_count()} processes the mesh must "
                      f"span all {len(devices)} devices; leave config.sync.devices=0")
  return Mesh(np.array(devices[:n]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_copy(tree):
  """A fully replicated global pytree as single-device arrays on this process's first device."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)
