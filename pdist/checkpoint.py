"""Checkpoints: save and restore any strategy's state with Orbax, optionally encrypted at rest.

A checkpoint holds the strategy's state pytree (parameters, optimizer state, keys, and for `ps`
the gradient slots) plus its JSON-able host part (for `ps` the simulator: event queue, clocks,
RNG, counters) and the resolved config. Written by orbax's CheckpointManager under
WORKDIR/checkpoints/<step>/ (async by default; orbax commits a step only when it is complete, so a
kill during a save leaves an uncommitted temporary directory that is never read). A step's
directories are made in the save call itself, not in orbax's background threads: a checkpoints
folder that cannot be written then fails that call at once, where in the background the threads
waiting for the directories would hold the process for orbax's 5-minute timeout.

Restoring takes the newest readable step; an unreadable one (truncated or missing files, failed
authentication) is reported in one line and the next older one is tried. If checkpoints exist but
none is readable, `CheckpointError` stops the run rather than silently starting over.

Encryption at rest (config.checkpoint.key_file, or the environment variable PDIST_CHECKPOINT_KEY):
the state and host part are serialised to one buffer and sealed with AES-256-GCM (the
`cryptography` package) under a fresh 96-bit nonce, with the step as associated data; orbax then
stores only the ciphertext. Threat model: it protects checkpoints that are copied, stolen or
modified at rest (disk, bucket, backup): without the key nothing about the parameters can be read,
and any modified byte — or a checkpoint moved to another step — fails authentication and is never
loaded. It does not protect a running process (parameters are in plaintext in memory and on the
accelerator), the key itself (keep the key file out of the workdir, readable only by you), the
config and step numbers (stored in the clear, as are file sizes), or metrics.jsonl.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sys
from typing import Any

import jax
import numpy as np

KEY_ENV = "PDIST_CHECKPOINT_KEY"
FORMAT = "pdist-checkpoint-2"  # 2: states hold the gradient pipeline's state
# config fields that may change between a run and its resumption
HARMLESS_FIELDS = ("train.steps", "train.log_every", "train.eval_every", "train.progress",
                   "train.tensorboard", "train.eval_train", "train.updates_per_call",
                   "train.save_params", "checkpoint.every", "checkpoint.keep",
                   "checkpoint.async_save", "checkpoint.restart", "checkpoint.key_file",
                   # the mesh and ZeRO stage place the same state differently (resume on another
                   # mesh: the restore places each array as the new run's state does)
                   "sync.devices", "sync.mesh.data", "sync.mesh.fsdp", "sync.mesh.tensor",
                   "sync.zero")


class CheckpointError(RuntimeError):
  """No usable checkpoint, a wrong key, or a config that does not match the checkpoint.

  `fatal` errors (a key that does not fit the checkpoints) stop the restore at once; the others
  make it fall back to an older checkpoint.
  """

  def __init__(self, message: str, fatal: bool = False):
    super().__init__(message)
    self.fatal = fatal


def load_key(key_file: str, log=None) -> bytes | None:
  """The AES-256 key: 64 hex digits in `key_file` or in $PDIST_CHECKPOINT_KEY; None if neither.

  One format only, so a 32-character passphrase or a 128-bit key written as 32 hex digits is
  refused rather than silently taken. A key file that others may read draws a warning.
  """
  if key_file:
    if not os.path.isfile(key_file):
      raise CheckpointError(f"config.checkpoint.key_file '{key_file}' does not exist")
    with open(key_file, "rb") as f:
      raw = f.read()
    source = f"key file '{key_file}'"
    if os.stat(key_file).st_mode & 0o077 and log is not None:
      log(f"pdist: warning: the key file '{key_file}' can be read by other users; "
          f"chmod 600 it")
  elif os.environ.get(KEY_ENV):
    raw, source = os.environ[KEY_ENV].encode(), f"${KEY_ENV}"
  else:
    return None
  text = raw.strip()
  try:
    key = bytes.fromhex(text.decode("ascii")) if len(text) == 64 else b""
  except (ValueError, UnicodeDecodeError):
    key = b""
  if len(key) != 32:
    raise CheckpointError(f"the {source} must hold exactly 64 hex digits (an AES-256 key), e.g. "
                          "from: python -c 'import os; print(os.urandom(32).hex())'")
  return key


def key_id(key: bytes) -> str:
  return hashlib.sha256(b"pdist-key-id" + key).hexdigest()[:16]


def _flat_config(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat_config(v, name + "."))
    else:
      out[name] = json.loads(json.dumps(v))  # tuples -> lists, as stored
  return out


def steps_matter(flat: dict) -> bool:
  """Whether train.steps changes the math of the updates: a schedule with a horizon (cosine
  decays to 0 at train.steps), or a noise multiplier calibrated to a target epsilon after
  train.steps."""
  return (flat.get("optim.schedule") in ("cosine", "warmup_cosine")
          or (flat.get("privacy.target_epsilon") or 0) > 0)


def config_differences(saved: dict, current: dict, defaults: dict | None = None) -> list[str]:
  """Fields (dotted) that differ and matter for resuming exactly. A field the saved config does
  not have (added to pdist after it was written) matches when the current value is the field's
  default in `defaults`: the run's math has not changed."""
  a, b = _flat_config(saved), _flat_config(current)
  d = _flat_config(defaults) if defaults else {}
  harmless = set(HARMLESS_FIELDS)
  # a pipeline stores its blocks stacked: another pipeline size (or micro-batch count) restores
  # the same arrays, but a run with a pipeline and one without hold different trees
  if a.get("sync.mesh.pipeline", 1) != 1 and b.get("sync.mesh.pipeline", 1) != 1:
    harmless.update(("sync.mesh.pipeline", "sync.microbatches"))
  if steps_matter(a) or steps_matter(b):
    harmless.discard("train.steps")

  def differs(k):
    if k not in a and k in d and b.get(k) == d[k]:
      return False
    return a.get(k) != b.get(k)

  return sorted(k for k in set(a) | set(b) if k not in harmless and differs(k))


def digest(state, host: dict, config_dict: dict) -> str:
  """sha256 over every leaf's dtype, shape and bytes, the host part and the config: written last
  into a plain checkpoint's metadata and checked on restore, so damage anywhere is detected."""
  h = hashlib.sha256(FORMAT.encode())
  for leaf in jax.tree.leaves(state):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      # several processes: a replicated leaf is digested by this process's copy; a leaf sharded
      # across processes (per-device pipeline state) is left to orbax's own checks
      if not leaf.sharding.is_fully_replicated:
        continue
      leaf = leaf.addressable_data(0)
    a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  h.update(json.dumps(host, sort_keys=True).encode())
  h.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
  return h.hexdigest()


def _meta_digest(meta: dict) -> str:
  """sha256 of the metadata's fields other than this digest, as JSON stores them."""
  body = {k: v for k, v in meta.items() if k != "meta_digest"}
  return hashlib.sha256(json.dumps(json.loads(json.dumps(body)), sort_keys=True).encode()).hexdigest()


def _serialise(state, host: dict) -> bytes:
  leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]
  buf = io.BytesIO()
  np.savez(buf, *leaves, host=np.frombuffer(json.dumps(host).encode(), np.uint8))
  return buf.getvalue()


def _deserialise(payload: bytes, abstract) -> tuple[Any, dict]:
  with np.load(io.BytesIO(payload)) as f:
    leaves = [f[f"arr_{i}"] for i in range(len(jax.tree.leaves(abstract)))]
    host = json.loads(f["host"].tobytes().decode())
  treedef = jax.tree.structure(abstract)
  shardings = [getattr(a, "sharding", None) for a in jax.tree.leaves(abstract)]
  placed = [jax.device_put(x, s) if s is not None else x for x, s in zip(leaves, shardings)]
  return jax.tree.unflatten(treedef, placed), host


class Checkpointer:
  """Orbax CheckpointManager for WORKDIR/checkpoints with fallback, mismatch checks and encryption."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               key: bytes | None = None, log=None, background: bool = False):
    """`background`: `save` returns at once and a worker thread does all of it (digest or
    encryption, orbax's save call, waiting for the commit); one save at a time, its error raised
    by the next call of save / wait / close. The caller must not change or donate the state it
    passed until then."""
    import orbax.checkpoint as ocp
    self.ocp = ocp
    self.directory = os.path.abspath(directory)
    self.key = key
    self.log = log or (lambda msg: print(msg, file=sys.stderr))
    # a damaged checkpoint makes tensorstore's async reads fail; pdist reports that in one line
    # and falls back, so asyncio's "Task exception was never retrieved" dumps are only noise
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    _quiet_orbax_write_errors()
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False)))
    self.async_save = async_save
    # the newest step this Checkpointer saw committed (None: none yet), and the save whose commit
    # is not confirmed yet: (step, on_saved)
    self.last_saved: int | None = None
    self._unconfirmed = None
    # a save failed and its error was raised: orbax's later errors (raised again in each thread
    # that waits, and by its close) are about that save
    self._failed = False
    self._pool = None
    if background:
      from concurrent.futures import ThreadPoolExecutor
      self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdist-checkpoint")
    self._future = None

  @property
  def background(self) -> bool:
    return self._pool is not None

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  # -- save -------------------------------------------------------------------------------------
  def save(self, step: int, state, host: dict, config_dict: dict, on_saved=None) -> None:
    """Saves `state` (and the JSON-able `host` part) as update `step`; `on_saved(step)` is
    called once the checkpoint is committed (never for a save that failed): right after the
    write in the background or without async saves, and at the next save / wait / close with
    orbax's own async saves in the main thread (several processes)."""
    if self._pool is None:
      self._save_now(step, state, host, config_dict, on_saved)
      return
    self._collect()
    self._future = self._pool.submit(self._save_now, step, state, host, config_dict, on_saved)

  def _collect(self) -> None:
    """Waits for the background save (if any) to be committed; raises its error here."""
    future, self._future = self._future, None
    if future is not None:
      future.result()

  def _confirm(self) -> None:
    """Waits for orbax's save in progress (if any) to be committed, then reports it: the
    `on_saved` of that save and `last_saved`. A failed commit raises here and reports nothing."""
    unconfirmed, self._unconfirmed = self._unconfirmed, None
    try:
      self.manager.wait_until_finished()
    except Exception:
      if self._failed:
        return
      self._failed = True
      raise
    if unconfirmed is not None:
      step, on_saved = unconfirmed
      self.last_saved = step
      if on_saved is not None:
        on_saved(step)

  def _save_now(self, step: int, state, host: dict, config_dict: dict, on_saved=None) -> None:
    try:
      self._write(step, state, host, config_dict, on_saved)
    except Exception:
      self._failed = True
      raise

  def _write(self, step: int, state, host: dict, config_dict: dict, on_saved) -> None:
    ocp = self.ocp
    self._confirm()   # the previous save (orbax would wait for it too), reported as committed
    meta = {"format": FORMAT, "step": step, "config": config_dict, "encrypted": self.key is not None}
    if self.key is None:
      meta["host"] = host
      meta["digest"] = digest(state, host, json.loads(json.dumps(config_dict)))
      tree = state
    else:
      from cryptography.hazmat.primitives.ciphers.aead import AESGCM
      nonce = os.urandom(12)
      sealed = AESGCM(self.key).encrypt(nonce, _serialise(state, host), self._aad(step))
      meta.update(nonce=nonce.hex(), key_id=key_id(self.key))
      tree = {"ciphertext": np.frombuffer(sealed, np.uint8)}
    meta["meta_digest"] = _meta_digest(meta)
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                    meta=ocp.args.JsonSave(meta)))
    self._unconfirmed = (step, on_saved)
    if self._pool is not None or not self.async_save:
      # a worker thread can wait for the commit; the main thread of a multi-process run leaves
      # it to orbax and confirms it at the next save / wait / close
      self._confirm()

  def wait(self) -> None:
    self._collect()
    self._confirm()

  def close(self) -> None:
    """Waits for the save in progress and closes; raises a failure not raised before (a failed
    save's error is raised once)."""
    try:
      self._collect()
      self._confirm()
    finally:
      try:
        self.manager.close()
      except Exception:
        if not self._failed:
          raise
      finally:
        if self._pool is not None:
          self._pool.shutdown()
        if self._failed:
          _join_orbax_threads(ORBAX_THREADS_SECONDS)

  @staticmethod
  def _aad(step: int) -> bytes:
    return f"{FORMAT}:step={step}".encode()

  # -- restore ----------------------------------------------------------------------------------
  def _read_meta(self, step: int) -> dict:
    path = os.path.join(self.directory, str(step), "meta", "metadata")
    with open(path) as f:
      meta = json.load(f)
    if meta.get("format") != FORMAT:
      found = meta.get("format")
      if isinstance(found, str) and found.startswith("pdist-checkpoint-"):
        raise CheckpointError(f"written by another pdist version (format {found!r}, this one "
                              f"reads {FORMAT!r}), whose state layout differs")
      raise CheckpointError(f"not a pdist checkpoint (format {found!r})")
    if meta.get("meta_digest") != _meta_digest(meta):
      raise CheckpointError("its metadata does not match its digest: modified or corrupt")
    return meta

  def _restore_step(self, step: int, abstract) -> tuple[Any, dict, dict]:
    ocp = self.ocp
    meta = self._read_meta(step)
    if meta["encrypted"]:
      if self.key is None:
        raise CheckpointError(
            f"the checkpoints in {self.directory} are encrypted: set config.checkpoint.key_file "
            f"or ${KEY_ENV} to their key", fatal=True)
      if meta["key_id"] != key_id(self.key):
        raise CheckpointError(f"checkpoint {step} was encrypted with a different key than the "
                              "one given", fatal=True)
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
      sealed = np.asarray(restored.state["ciphertext"], np.uint8).tobytes()
      from cryptography.exceptions import InvalidTag
      from cryptography.hazmat.primitives.ciphers.aead import AESGCM
      try:
        payload = AESGCM(self.key).decrypt(bytes.fromhex(meta["nonce"]), sealed, self._aad(step))
      except InvalidTag:
        raise CheckpointError(f"checkpoint {step} failed authentication: it was modified or "
                              "is corrupt") from None
      state, host = _deserialise(payload, abstract)
      return state, host, meta
    if self.key is not None:
      raise CheckpointError(f"checkpoint {step} is not encrypted but a key was given; resume "
                            "without config.checkpoint.key_file, or start fresh", fatal=True)
    target = jax.tree.map(self.ocp.utils.to_shape_dtype_struct, abstract)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    # restore into exactly the strategy's tree structure (namedtuples included)
    state = jax.tree.unflatten(jax.tree.structure(abstract), jax.tree.leaves(restored.state))
    if digest(state, meta["host"], meta["config"]) != meta.get("digest"):
      raise CheckpointError(f"checkpoint {step} does not match its digest: it was modified or "
                            "is corrupt")
    return state, meta["host"], meta

  def restore_latest(self, abstract, config_dict: dict,
                     defaults: dict | None = None) -> tuple[int, Any, dict] | None:
    """(step, state, host) of the newest readable checkpoint; None if there is none at all.
    `defaults`: the schema's defaults, for fields newer than a checkpoint's config."""
    steps = self.steps()
    if not steps:
      return None
    failures = []
    for step in reversed(steps):
      try:
        meta = self._read_meta(step)
      except Exception as e:  # noqa: BLE001 -- any unreadable metadata: try an older step
        failures.append((step, _one_line(e)))
        self._say_fallback(step, failures[-1][1], steps)
        continue
      differing = config_differences(meta["config"], config_dict, defaults)
      if differing:
        shown = ", ".join(f"config.{k}" for k in differing[:8])
        raise CheckpointError(
            f"the checkpoints in {self.directory} were written with a different config "
            f"({shown}{', ...' if len(differing) > 8 else ''}); resume with the same config, "
            "use another --workdir, or pass --config.checkpoint.restart=fresh to discard them")
      try:
        state, host, _ = self._restore_step(step, abstract)
        return step, state, host
      except CheckpointError as e:
        if e.fatal:
          raise
        failures.append((step, str(e)))
      except Exception as e:  # noqa: BLE001 -- truncated or missing files surface in many types
        failures.append((step, _one_line(e)))
      self._say_fallback(step, failures[-1][1], steps)
    detail = "; ".join(f"step {s}: {why}" for s, why in failures)
    raise CheckpointError(f"none of the checkpoints in {self.directory} is readable ({detail}); "
                          "pass --config.checkpoint.restart=fresh to start over")

  def _say_fallback(self, step: int, why: str, steps: list[int]) -> None:
    older = [s for s in steps if s < step]
    then = f"falling back to step {older[-1]}" if older else "no older checkpoint"
    self.log(f"pdist: checkpoint {step} is unreadable ({why}); {then}")

  def discard_all(self) -> None:
    """Deletes every checkpoint (only on an explicit restart=fresh)."""
    self.manager.wait_until_finished()
    for step in self.steps():
      self.manager.delete(step)
    for name in os.listdir(self.directory):  # uncommitted temporaries from a killed save
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)


# after a failed commit, how long `close` waits for orbax's other write threads of that save
ORBAX_THREADS_SECONDS = 30.0


def _join_orbax_threads(seconds: float) -> None:
  """Waits (at most `seconds` in all) for orbax's background write threads still running.

  A failed commit fails orbax's save at its first error while its other threads (the arrays'
  writes, their metadata) go on; left running, they meet the interpreter's shutdown and each
  dumps a traceback."""
  import threading
  import time
  end = time.monotonic() + seconds
  for thread in threading.enumerate():
    if (thread is not threading.current_thread() and not thread.daemon
        and type(thread).__module__.startswith("orbax.")):
      thread.join(max(0.0, end - time.monotonic()))


class _OrbaxWriteErrors(logging.Filter):
  """Drops orbax's ERROR records of a failed write (an OSError, logged with its traceback by
  each of its threads that saw it): the Checkpointer raises the same error to its caller, which
  reports it in one sentence."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (record.levelno >= logging.ERROR and isinstance(error, OSError)
                and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _quiet_orbax_write_errors() -> None:
  """Installs `_OrbaxWriteErrors` on absl's logger (through which orbax logs), once."""
  logger = logging.getLogger("absl")
  if not any(isinstance(f, _OrbaxWriteErrors) for f in logger.filters):
    logger.addFilter(_OrbaxWriteErrors())


def _one_line(e: BaseException) -> str:
  """A storage error in words: tensorstore's messages run to kilobytes of internals."""
  text = str(e).strip()
  if "DATA_LOSS" in text or "checksum" in text.lower():
    return "its stored arrays are damaged (a checksum failed)"
  if "NOT_FOUND" in text or isinstance(e, FileNotFoundError):
    return "some of its files are missing"
  if isinstance(e, json.JSONDecodeError):
    return "its metadata is not valid JSON"
  first = text.splitlines()[0] if text else ""
  return f"{type(e).__name__}: {first[:120]}" if first else type(e).__name__
