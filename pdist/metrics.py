"""Metrics files and progress: metrics.jsonl (one JSON object per logged step), summary.json.

Fields whose value depends on the machine's speed are listed in TIMING_FIELDS; everything else in
a metrics file is a deterministic function of the config.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import sys
import time
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

  def flush(self) -> None:
    """Puts the TensorBoard events written so far on disk (metrics.jsonl already is): called
    when a checkpoint is saved, so that a run killed later keeps the events up to it."""
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


TENSORBOARD = "tensorboard"   # WORKDIR/tensorboard
CONFIG_TAG = "config"         # the run's config as text, at step 0
CONFIG_TAGS = (CONFIG_TAG, CONFIG_TAG + "/text_summary")   # tensorboardX stores text as the latter


class TensorBoardWriter:
  """Scalars of every row to TensorBoard event files under WORKDIR/tensorboard (tensorboardX's
  protos and record framing, no TensorFlow needed), and the run's config as text at step 0.
  `tensorboard --logdir runs/` then shows every run. Lists (e.g. staleness_hist) are written as
  `<name>/<index>` scalars. One event a row, written in this thread (tensorboardX's
  SummaryWriter queues events to a thread of its own, so a flush could miss the last ones) and
  put on disk every FLUSH_SECONDS, at `flush` (each checkpoint) and at `close`."""

  FLUSH_SECONDS = 10.0

  def __init__(self, workdir: str, config_json: str | None = None):
    from tensorboardX.event_file_writer import EventsWriter
    directory = os.path.join(workdir, TENSORBOARD)
    os.makedirs(directory, exist_ok=True)
    # tensorboardX names a file by the second it opened it: a run resumed within that second
    # would truncate the earlier file, so the name also carries the nanoseconds
    self._events = EventsWriter(os.path.join(directory, "events"), f".{time.time_ns()}")
    self._flushed = time.monotonic()
    if config_json is not None:
      from tensorboardX.summary import text
      self._add(text(CONFIG_TAG, "```\n" + config_json + "\n```"), 0)

  def _add(self, summary, step: int) -> None:
    from tensorboardX.proto.event_pb2 import Event
    self._events.write_event(Event(wall_time=time.time(), step=step, summary=summary))

  def write(self, row: dict[str, Any]) -> None:
    from tensorboardX.summary import scalar
    step = int(row["step"])
    values = []
    for key, value in row.items():
      if key == "step":
        continue
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        values.extend(scalar(key, float(value)).value)
      elif isinstance(value, list):
        for i, v in enumerate(value):
          if isinstance(v, (int, float)):
            values.extend(scalar(f"{key}/{i}", float(v)).value)
    if values:
      from tensorboardX.proto.summary_pb2 import Summary
      self._add(Summary(value=values), step)
    if time.monotonic() - self._flushed >= self.FLUSH_SECONDS:
      self.flush()

  def flush(self) -> None:
    self._events.flush()
    self._flushed = time.monotonic()

  def close(self) -> None:
    self._events.close()


def _event_records(data: bytes) -> tuple[list[bytes], int]:
  """(records, bytes they span) of a TFRecord file (TensorBoard's event files: each record is
  its length as uint64, the length's masked CRC-32C, the bytes, their masked CRC-32C), up to the
  first record that is cut short or fails its CRC (a run killed while writing)."""
  from tensorboardX.record_writer import masked_crc32c
  records, pos = [], 0
  while pos + 12 <= len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    end = pos + 12 + length
    if (struct.unpack("<I", data[pos + 8:pos + 12])[0] != masked_crc32c(header)
        or end + 4 > len(data)):
      break
    body = data[pos + 12:end]
    if struct.unpack("<I", data[end:end + 4])[0] != masked_crc32c(body):
      break
    records.append(body)
    pos = end + 4
  return records, pos


def tensorboard_up_to(directory: str, step: int) -> None:
  """Cuts the TensorBoard event files in `directory` (WORKDIR/tensorboard) back to the values
  of steps <= `step`, as a resumed run cuts metrics.jsonl: the resumed run writes the later
  steps again (into a new event file), so each step is logged once. The config text goes too:
  the resumed run writes its own. A file is rewritten atomically, and removed when no values are
  left in it; a torn last record (a run killed while writing) is dropped."""
  from tensorboardX.proto import event_pb2
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    if path.endswith(".tmp"):   # a rewrite that was killed; its original is intact
      os.remove(path)
      continue
    with open(path, "rb") as f:
      data = f.read()
    records, spanned = _event_records(data)
    if data and not records:    # not an event file this reader knows: left as it is
      continue
    kept, values, changed = [], 0, spanned != len(data)
    for body in records:
      event = event_pb2.Event.FromString(body)
      if event.HasField("summary"):
        keep = [v for v in event.summary.value
                if event.step <= step and v.tag not in CONFIG_TAGS]
        values += len(keep)
        if len(keep) != len(event.summary.value):
          changed = True
          if not keep:
            continue
          del event.summary.value[:]
          event.summary.value.extend(keep)
          body = event.SerializeToString()
      kept.append(body)
    if not values:
      os.remove(path)
    elif changed:
      from tensorboardX.record_writer import RecordWriter
      out = RecordWriter(path + ".tmp")   # tensorboardX's own framing of each record
      for body in kept:
        out.write(body)
      out.close()
      os.replace(path + ".tmp", path)


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
