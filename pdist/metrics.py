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

TIMING_FIELDS = frozenset({"wall_time", "steps_per_sec", "updates_per_sec", "secagg_client_seconds",
                           "secagg_server_seconds"})


def _clean(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no nan/inf; keep them readable instead of invalid
  return value


class MetricsWriter:
  """Appends rows to WORKDIR/metrics.jsonl, flushed after every row, and (if asked) to TensorBoard
  event files beside it. Only process 0 writes."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = False,
               config_json: str | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self._file = open(self.path, "a") if enabled else None
    self._tb = TensorBoardWriter(workdir, config_json) if enabled and tensorboard else None

  def write(self, row: dict[str, Any]) -> None:
    if self._file is None:
      return
    self._file.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
    self._file.flush()
    if self._tb is not None:
      self._tb.write(row)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class TensorBoardWriter:
  """Scalars of every row to TensorBoard event files under WORKDIR/tensorboard (tensorboardX, no
  TensorFlow needed), and the run's config as text at step 0. `tensorboard --logdir runs/` then
  shows every run. Lists (e.g. staleness_hist) are written as `<name>/<index>` scalars."""

  def __init__(self, workdir: str, config_json: str | None = None):
    from tensorboardX import SummaryWriter
    self._writer = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=10)
    if config_json is not None:
      self._writer.add_text("config", "```\n" + config_json + "\n```", 0)

  def write(self, row: dict[str, Any]) -> None:
    step = int(row["step"])
    for key, value in row.items():
      if key == "step":
        continue
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._writer.add_scalar(key, float(value), step)
      elif isinstance(value, list):
        for i, v in enumerate(value):
          if isinstance(v, (int, float)):
            self._writer.add_scalar(f"{key}/{i}", float(v), step)

  def close(self) -> None:
    self._writer.close()


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
