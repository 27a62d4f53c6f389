"""The workdir: checked before anything is written, locked for the run's life, and provenance.

- `prepare(path)`: the directory exists (or is made) and is writable; otherwise one sentence.
- `Lock`: an OS-level lock (`fcntl.flock`) on WORKDIR/.lock, held while the run lives and
  released by the kernel on any exit, SIGKILL included; a second run on the same workdir stops at
  once, naming the holder. (flock works between processes of one machine; on a network file
  system it depends on the file system.)
- `provenance(command)`: what a reviewer needs to trust a number — pdist's git commit and whether
  the tree was dirty, library versions, devices, processes, the command line.
"""

from __future__ import annotations

import fcntl
import os
import platform
import socket
import subprocess
import time
from importlib import metadata

from pdist.registry import ConfigError


def prepare(path: str) -> None:
  """Makes `path` if needed and checks it is a writable directory (ConfigError otherwise)."""
  if not path:
    raise ConfigError("--workdir must name a directory, got an empty string")
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir '{path}' is a file, not a directory")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"cannot create the workdir '{path}': {e.strerror}") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise ConfigError(f"cannot write to the workdir '{path}' (permission denied)")
  for name in ("metrics.jsonl", "summary.json", "config.json"):
    if os.path.isdir(os.path.join(path, name)):
      raise ConfigError(f"cannot write {os.path.join(path, name)}: a directory is in the way")


class Lock:
  """flock on WORKDIR/.lock for the life of a run; `acquire` raises ConfigError if taken."""

  def __init__(self, path: str):
    self.path = os.path.join(path, ".lock")
    self._file = None

  def acquire(self) -> "Lock":
    try:
      f = open(self.path, "a+")
    except OSError as e:
      raise ConfigError(f"cannot write {self.path}: {e.strerror}") from None
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise ConfigError(f"the workdir '{os.path.dirname(self.path)}' is in use by another pdist "
                        f"run ({holder}); wait for it to finish or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def _git(*args: str) -> str | None:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def provenance(command: list[str] | None = None) -> dict:
  """Where a result came from: code version, libraries, devices, processes, command line."""
  import jax
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "dp-accounting"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  commit = _git("rev-parse", "HEAD")
  status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
  device = jax.devices()[0]
  return {"pdist_commit": commit, "pdist_tree_dirty": bool(status) if commit else None,
          "versions": versions, "python": platform.python_version(),
          "devices": {"kind": getattr(device, "device_kind", device.platform),
                      "platform": device.platform, "count": jax.device_count(),
                      "local_count": jax.local_device_count()},
          "processes": jax.process_count(), "host": platform.node(),
          "command": command if command is not None else None}


class OutputError(RuntimeError):
  """A file of the run could not be written (disk full, read-only, a directory in the way)."""

  def __init__(self, path: str, error: OSError):
    super().__init__(f"could not write {path}: {error.strerror or error}")
    self.path = path


__all__ = ["prepare", "Lock", "provenance", "OutputError"]
