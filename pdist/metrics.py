"""Metrics files and progress: metrics.jsonl (one JSON object per logged step), summary.json.

Fields whose value depends on the machine's speed are listed in TIMING_FIELDS; everything else in
a metrics file is a deterministic function of the config.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable

TIMING_FIELDS = frozenset({"wall_time", "steps_per_sec", "updates_per_sec"})


def _clean(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no nan/inf; keep them readable instead of invalid
  return value


class MetricsWriter:
  """Appends rows to WORKDIR/metrics.jsonl, flushed after every row. Only process 0 writes."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self._file = open(self.path, "a") if enabled else None

  def write(self, row: dict[str, Any]) -> None:
    if self._file is None:
      return
    self._file.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def read(workdir: str) -> list[dict[str, Any]]:
  """The rows of WORKDIR/metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def without_timing(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
  """Rows with the machine-dependent fields removed: what two runs of one config share exactly."""
  return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def progress(total: int, initial: int = 0, enabled: bool = True):
  """A tqdm bar on stderr (steps, loss, rate); a no-op object when disabled."""
  if not enabled:
    return _NoBar()
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, file=sys.stderr, unit="step", dynamic_ncols=True,
              mininterval=0.5)


class _NoBar:
  def update(self, n: int) -> None:
    pass

  def set_postfix(self, *args, **kwargs) -> None:
    pass

  def close(self) -> None:
    pass
