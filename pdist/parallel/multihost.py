"""Several processes, one global mesh: jax.distributed set-up.

Each process calls `initialize` before anything else touches JAX's backend; afterwards
jax.devices() lists every process's devices and the `sync` strategy's mesh spans them all. On one
machine `python -m pdist.launch` starts the processes on loopback; on several machines run the same
`python -m pdist` command on each with --coordinator HOST:PORT --num_processes N --process_id I.
"""

from __future__ import annotations

import socket
import sys
import time

import jax


class DistributedError(RuntimeError):
  """The processes could not form a group (coordinator unreachable, timeout, bad arguments)."""


def initialize(coordinator: str, num_processes: int, process_id: int,
               local_devices: int = 0, timeout_s: int = 60) -> None:
  """Joins the process group; `local_devices` > 0 sets the CPU device count of this process.

  The coordinator (process 0) binds exactly `coordinator` (e.g. 127.0.0.1:PORT on one machine),
  never all interfaces.
  """
  if not 0 <= process_id < num_processes:
    raise DistributedError(f"--process_id={process_id} must be in [0, {num_processes})")
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise DistributedError(f"--coordinator='{coordinator}' must look like HOST:PORT")
  if local_devices:
    jax.config.update("jax_num_cpu_devices", local_devices)
  deadline = time.monotonic() + timeout_s
  if process_id == 0:
    print(f"pdist: process 0 waits up to {timeout_s} s for {num_processes} processes at "
          f"{coordinator}", file=sys.stderr)
  else:
    # JAX aborts the whole process when the coordinator cannot be reached in time; probe it first
    # so that an unreachable coordinator is a clear error instead
    _wait_for_coordinator(host, int(port), deadline, process_id, num_processes, timeout_s)
  timeout_s = max(1, int(deadline - time.monotonic()))
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
        coordinator_bind_address=coordinator, initialization_timeout=timeout_s)
  except Exception as e:  # noqa: BLE001 -- JAX raises several types here; report them in one line
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DistributedError(
        f"process {process_id} of {num_processes} could not join the group at {coordinator} "
        f"within {timeout_s} s ({first[:200]})") from None


def _wait_for_coordinator(host: str, port: int, deadline: float, process_id: int,
                          num_processes: int, timeout_s: int) -> None:
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise DistributedError(
            f"process {process_id} of {num_processes} could not reach the coordinator at "
            f"{host}:{port} within {timeout_s} s ({e.strerror or e}); start process 0 first "
            "or check --coordinator") from None
      time.sleep(0.2)  # retry back-off while the coordinator starts
