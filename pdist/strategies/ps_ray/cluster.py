"""Starting and stopping Ray: a local instance bound to 127.0.0.1 or a named cluster, checked for
the workers' resources; and the scripted kills (config.ps.failures.at) of a run."""

from __future__ import annotations

import os

import numpy as np

from pdist import tls
from pdist.registry import ConfigError


def last_line(error) -> str:
  """The last non-empty line of an error's text (Ray's carry the remote traceback above it)."""
  lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
  return lines[-1] if lines else type(error).__name__


def check_reachable(address: str, timeout: float = 5.0) -> None:
  import socket  # noqa: PLC0415
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
      pass
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.ps.ray_address='{address}' is not a reachable Ray cluster "
                      f"(HOST:PORT of its head, or 'auto'): {e}") from None


def start_ray(address: str, workers: int, worker_cpus: float, worker_gpus: float = 0.0):
  """The `ray` module, connected: to the cluster at `address`, or to a new local instance bound
  to 127.0.0.1 with no dashboard. Raises ConfigError when the cluster is unreachable or cannot
  place the workers."""
  if not address:
    # a single-machine instance: every server Ray starts binds to the loopback address
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
  elif "RAY_AUTH_MODE" not in os.environ and (
      os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(os.path.expanduser("~/.ray/auth_token"))):
    # Ray presents the cluster's token for address='auto' only; do the same for HOST:PORT
    os.environ["RAY_AUTH_MODE"] = "token"
  import logging  # noqa: PLC0415
  import warnings  # noqa: PLC0415

  ray = tls.import_ray()   # notes the TLS variables Ray reads once per process
  if ray.is_initialized():
    ray.shutdown()
  quiet = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
  try:
    with warnings.catch_warnings():  # Ray starts its processes by fork+exec; JAX warns of forks
      warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
      if address:
        ray.init(address=address, **quiet)
      else:
        # "local": a new instance even when RAY_ADDRESS or /tmp/ray/ray_current_cluster (left by
        # a `ray start`, also a stopped one) names another, which ray.init would join instead
        ray.init(address="local",
                 num_cpus=max(os.cpu_count() or 1, int(np.ceil(workers * worker_cpus))), **quiet)
  except (ConnectionError, RuntimeError, ValueError) as e:
    raise ConfigError(f"config.ps.ray_address='{address}': could not connect to a Ray cluster "
                      f"({str(e).splitlines()[0] if str(e) else type(e).__name__}; a cluster "
                      "started with `ray start` needs its token here: ~/.ray/auth_token or "
                      "RAY_AUTH_TOKEN)") from None
  for kind, each in (("CPU", worker_cpus), ("GPU", worker_gpus)):
    have = ray.cluster_resources().get(kind, 0.0)
    if have < workers * each:
      ray.shutdown()
      raise ConfigError(f"config.ps.workers={workers} x config.ps.ray_worker_{kind.lower()}s="
                        f"{each:g} needs {workers * each:g} {kind}s but the Ray cluster has "
                        f"{have:g}")
  return ray


def kill_schedule(at, trained_seconds: float) -> list[tuple[float, int]]:
  """failures.at's (seconds of training, worker) kills still ahead of a run that has trained
  `trained_seconds` already, as seconds from now, in order: a resumed run does not repeat the
  kills before its checkpoint."""
  return sorted((float(t) - trained_seconds, int(w)) for t, w in at if t > trained_seconds)
