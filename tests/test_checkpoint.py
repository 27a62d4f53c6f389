"""Recovery: kill and resume bit for bit, preemption, corrupt checkpoints, mismatch, encryption."""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, load_experiment, tensorboard_values
from pdist import checkpoint as ckpt_lib
from pdist import metrics, train

BASE = ["--config.train.progress=False", "--config.train.save_params=True",
        "--config.checkpoint.every=20", "--config.train.log_every=10",
        "--config.model.hidden=(32,32)"]
VARIANTS = {
    "single": ["--config", "experiments/mnist1d.py:tiny", "--config.train.steps=200"],
    "sync": ["--config", "experiments/mnist1d_sync.py:tiny,mlp", "--config.train.steps=200",
             "--config.data.batch_size=64"],
    "ps": ["--config", "experiments/mnist1d.py:tiny", "--config.strategy=ps",
           "--config.train.steps=200", "--config.ps.workers=4",
           "--config.ps.compute_time.dist=lognormal", "--config.ps.compute_time.spread=0.6",
           "--config.ps.stragglers.fraction=0.25", "--config.ps.stragglers.factor=3.0",
           "--config.ps.failures.rate=0.02", "--config.ps.failures.restart_delay=2.0",
           "--config.network.latency=0.05", "--config.data.batch_size=16"],
    # per-client SCAFFOLD state, dropouts, stragglers and the simulated-time totals
    "federated": ["--config", "experiments/fedavg.py:tiny,scaffold,dropouts",
                  "--config.train.steps=200"],
    # DiLoCo with 3 fragments after a synchronous warm-up; rounds (H=6) straddle checkpoints
    "local": ["--config", "experiments/local_sgd.py:tiny,streaming", "--config.train.steps=200",
              "--config.local.inner_steps=6", "--config.local.sync_warmup=10"],
    "gossip": ["--config", "experiments/gossip.py:tiny,exponential", "--config.train.steps=200"],
}


def _cmd(variant, workdir, extra=()):
  return [sys.executable, "-m", "pdist", *VARIANTS[variant], *BASE, "--workdir", str(workdir),
          *extra]


def _env():
  return dict(os.environ, PYTHONPATH=ROOT)   # conftest's XLA_FLAGS: the same compiled programs


def _reference(variant, workdir):
  """The run of `_cmd(variant, workdir)` in this process (the same config and devices as the
  command line's, a subprocess's start-up saved): params.npz and metrics.jsonl in `workdir`."""
  from pdist import config as config_lib
  args = VARIANTS[variant] + BASE
  spec = os.path.join(ROOT, args[args.index("--config") + 1])
  overrides = [a for a in args if a.startswith("--config.")]
  train.run(config_lib.load(spec, overrides), str(workdir))


def _run(cmd, expect=0):
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == expect, proc.stderr[-3000:]
  return proc


def _start_and_wait_for_checkpoints(cmd, count):
  """Starts cmd and reads its stderr until `count` checkpoint lines have appeared."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True,
                          stdout=subprocess.DEVNULL)
  seen = 0
  for line in proc.stderr:
    if line.startswith("pdist: checkpoint at update"):
      seen += 1
      if seen == count:
        return proc, int(line.split()[-1])
  raise AssertionError("the run ended before writing enough checkpoints")


def _same_params(a, b):
  pa, pb = train.load_params(os.path.join(a, "params.npz")), \
      train.load_params(os.path.join(b, "params.npz"))
  assert pa.keys() == pb.keys()
  for k in pa:
    assert np.array_equal(pa[k], pb[k]), k  # bit for bit


@pytest.mark.slow
# local and gossip resume mid-round in-process in tests/test_local.py; their SIGKILL runs are in
# `make test-all`
@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.long)
                                     if v in ("local", "gossip") else v for v in sorted(VARIANTS)])
def test_killed_run_resumes_bit_for_bit(variant, tmp_path, capsys):
  ref, run = tmp_path / "ref", tmp_path / "run"
  _reference(variant, ref)
  rng = random.Random(variant)
  # the line is printed once its checkpoint is committed; the next save may be being written
  # when the kill comes
  proc, _ = _start_and_wait_for_checkpoints(_cmd(variant, run), rng.randint(2, 4))
  if rng.random() < 0.5:  # now: most likely while the async save is still being written
    proc.stderr.readline()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  capsys.readouterr()
  _reference(variant, run)  # the same command, resumed in this process (a start-up saved)
  assert "pdist: resuming from the checkpoint at update" in capsys.readouterr().err
  _same_params(ref, run)
  ref_rows, rows = metrics.read(str(ref)), metrics.read(str(run))
  assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]  # each step exactly once
  assert metrics.without_timing(rows) == metrics.without_timing(ref_rows)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_where_it_arrived(tmp_path):
  ref, run = tmp_path / "ref", tmp_path / "run"
  _reference("single", ref)
  proc, _ = _start_and_wait_for_checkpoints(_cmd("single", run), 2)
  proc.send_signal(signal.SIGTERM)
  err = proc.stderr.read()
  proc.wait()
  assert proc.returncode == train.PREEMPTED_EXIT, err[-2000:]
  saved = int(err.split("saved a checkpoint at update ")[1].split(";")[0])
  last_logged = metrics.read(str(run))[-1]["step"]
  assert saved == last_logged < 200  # the update the run had reached, and nothing after it
  assert saved in ckpt_lib.Checkpointer(str(run / "checkpoints")).steps()
  _reference("single", run)  # resumed in this process
  _same_params(ref, run)


def _config(steps, every=10, **kw):
  c = load_experiment("mnist1d", "tiny")
  c.train.steps, c.train.log_every, c.train.progress = steps, 10, False
  c.checkpoint.every, c.checkpoint.keep = every, 3
  c.model.hidden = (16, 16)
  for k, v in kw.items():
    group, field = k.split("__")
    c[group][field] = v
  return c


def _corrupt(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f)]
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(max(0, os.path.getsize(f) // 3))


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_and_still_matches(tmp_path, capsys):
  ref = train.run(_config(60), str(tmp_path / "ref"))
  work = str(tmp_path / "run")
  train.run(_config(40), work)                       # checkpoints at 20, 30, 40
  _corrupt(os.path.join(work, "checkpoints", "40"))
  os.makedirs(os.path.join(work, "checkpoints", "50.orbax-checkpoint-tmp-1"))  # a killed save
  resumed = train.run(_config(60), work)
  err = capsys.readouterr().err
  assert "pdist: checkpoint 40 is unreadable" in err and "falling back to step 30" in err
  assert resumed.summary["resumed_from"] == 30
  for a, b in zip(np.asarray(ref.params["Dense_0"]["kernel"]),
                  np.asarray(resumed.params["Dense_0"]["kernel"])):
    assert np.array_equal(a, b)
  assert [r["step"] for r in metrics.read(work)] == list(range(10, 61, 10))


def test_no_readable_checkpoint_is_an_error_not_a_restart(tmp_path):
  work = str(tmp_path / "run")
  train.run(_config(20), work)
  for d in glob.glob(os.path.join(work, "checkpoints", "[0-9]*")):
    _corrupt(d)
  with pytest.raises(ckpt_lib.CheckpointError, match="none of the checkpoints in .* is readable"):
    train.run(_config(40), work)
  fresh = train.run(_config(40, checkpoint__restart="fresh"), work)
  assert fresh.summary["resumed_from"] == 0


def test_incompatible_config_names_the_fields_and_harmless_changes_pass(tmp_path):
  work = str(tmp_path / "run")
  train.run(_config(20), work)
  changed = _config(40)
  changed.model.hidden = (8, 8)
  changed.optim.learning_rate = 0.5
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"different config \(config.model.hidden, config.optim.learning_rate\)"):
    train.run(changed, work)
  harmless = _config(40)
  harmless.train.log_every, harmless.train.eval_every = 5, 0
  assert train.run(harmless, work).summary["resumed_from"] == 20


@pytest.mark.slow
def test_command_line_reports_checkpoint_errors_in_one_line(tmp_path, capsys):
  from pdist.__main__ import main
  work = tmp_path / "run"
  args = _cmd("single", work, ["--config.train.steps=40"])[3:]  # after `python -m pdist`
  assert main(args) == 0
  capsys.readouterr()
  assert main(args + ["--config.model.hidden=(8,8)"]) == 2
  err = capsys.readouterr().err
  assert "config.model.hidden" in err and "Traceback" not in err
  assert len(err.strip().splitlines()) == 1


def _key_file(tmp_path, name="key"):
  path = tmp_path / name
  path.write_text(os.urandom(32).hex())
  return str(path)


def test_encrypted_checkpoints_round_trip_and_hold_no_plaintext(tmp_path):
  key = _key_file(tmp_path)
  ref = train.run(_config(40), str(tmp_path / "ref"))
  plain = str(tmp_path / "plain")
  train.run(_config(20), plain)
  work = str(tmp_path / "enc")
  first = train.run(_config(20, checkpoint__key_file=key), work)
  needle = np.asarray(first.params["Dense_0"]["kernel"]).tobytes()[:64]

  def in_files(directory):
    for f in glob.glob(os.path.join(directory, "checkpoints", "**", "*"), recursive=True):
      if os.path.isfile(f) and needle in open(f, "rb").read():
        return True
    return False

  def in_stored_arrays(directory):
    """What orbax holds once its own compression is undone: every stored array's bytes."""
    import jax
    import orbax.checkpoint as ocp
    tree = ocp.StandardCheckpointer().restore(
        os.path.join(directory, "checkpoints", "20", "state"))
    return any(needle in np.asarray(x).tobytes() for x in jax.tree.leaves(tree))

  assert in_stored_arrays(plain)    # the search does find the parameters in a plain checkpoint
  assert not in_stored_arrays(work) and not in_files(work)   # and not in an encrypted one
  resumed = train.run(_config(40, checkpoint__key_file=key), work)
  assert resumed.summary["resumed_from"] == 20
  assert np.array_equal(np.asarray(ref.params["Dense_0"]["kernel"]),
                        np.asarray(resumed.params["Dense_0"]["kernel"]))


def test_wrong_or_missing_key_and_tampering_are_refused(tmp_path, monkeypatch):
  key = _key_file(tmp_path)
  work = str(tmp_path / "enc")
  train.run(_config(20, every=20, checkpoint__key_file=key), work)   # one checkpoint, at 20
  with pytest.raises(ckpt_lib.CheckpointError, match="encrypted with a different key"):
    train.run(_config(40, checkpoint__key_file=_key_file(tmp_path, "other")), work)
  monkeypatch.delenv(ckpt_lib.KEY_ENV, raising=False)
  with pytest.raises(ckpt_lib.CheckpointError, match="are encrypted: set config.checkpoint.key_file"):
    train.run(_config(40), work)
  monkeypatch.setenv(ckpt_lib.KEY_ENV, open(key).read())  # the environment variable works too
  assert train.run(_config(30, every=30), str(tmp_path / "env")).summary["step"] == 30
  blobs = [f for f in glob.glob(os.path.join(work, "checkpoints", "20", "state", "**", "*"),
                                recursive=True) if os.path.isfile(f) and os.path.getsize(f) > 1000]
  with open(max(blobs, key=os.path.getsize), "r+b") as fh:  # flip one byte of the ciphertext
    fh.seek(os.path.getsize(fh.name) // 2)
    byte = fh.read(1)
    fh.seek(-1, 1)
    fh.write(bytes([byte[0] ^ 1]))
  with pytest.raises(ckpt_lib.CheckpointError, match="failed authentication"):
    train.run(_config(40, every=20, checkpoint__key_file=key), work)


def test_a_key_for_plain_checkpoints_is_refused(tmp_path):
  work = str(tmp_path / "plain")
  train.run(_config(20), work)
  with pytest.raises(ckpt_lib.CheckpointError, match="is not encrypted but a key was given"):
    train.run(_config(40, checkpoint__key_file=_key_file(tmp_path)), work)


def test_bad_key_file_is_a_clear_error(tmp_path):
  bad = tmp_path / "bad"
  bad.write_text("not a key")
  for text in ("not a key", "correct-horse-battery-staple-123", os.urandom(16).hex()):
    bad.write_text(text)  # a passphrase of 32 characters, a 128-bit key as 32 hex digits
    with pytest.raises(ckpt_lib.CheckpointError, match="must hold exactly 64 hex digits"):
      train.run(_config(20, checkpoint__key_file=str(bad)), str(tmp_path / "w"))
  with pytest.raises(ckpt_lib.CheckpointError, match="does not exist"):
    train.run(_config(20, checkpoint__key_file=str(tmp_path / "none")), str(tmp_path / "w"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads
def test_a_flipped_byte_in_any_file_of_a_plain_checkpoint_never_changes_the_run(tmp_path, capsys):
  """Every file of the newest checkpoint in turn gets one byte flipped: the run either detects it
  (one line, falls back to the previous checkpoint) or the byte did not matter; either way the
  final parameters are those of an uninterrupted run."""
  import shutil
  ref = train.run(_config(40), str(tmp_path / "ref"))
  base = tmp_path / "base"
  train.run(_config(30), str(base))
  newest = base / "checkpoints" / "30"
  files = sorted(f for f in glob.glob(str(newest / "**" / "*"), recursive=True)
                 if os.path.isfile(f) and os.path.getsize(f) > 0)
  assert len(files) >= 4
  fell_back = []
  for i, f in enumerate(files):
    work = tmp_path / f"flip{i}"
    shutil.copytree(base, work)
    target = work / os.path.relpath(f, base)
    with open(target, "r+b") as fh:
      fh.seek(os.path.getsize(target) // 2)
      byte = fh.read(1)
      fh.seek(-1, 1)
      fh.write(bytes([byte[0] ^ 0x10]))
    capsys.readouterr()
    resumed = train.run(_config(40), str(work))
    err = capsys.readouterr().err
    if resumed.summary["resumed_from"] != 30:
      fell_back.append(os.path.relpath(f, newest))
      assert "checkpoint 30 is unreadable" in err and "falling back to step 20" in err, f
      assert len([line for line in err.splitlines() if "unreadable" in line]) == 1
    for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(resumed.params)):
      assert np.array_equal(np.asarray(a), np.asarray(b)), f
  # pdist's metadata and the stored data are caught; a flip in bytes that the restore never
  # reads (orbax's commit marker, unused b-tree space) changes nothing and cannot be seen
  assert "meta/metadata" in fell_back
  assert sum("/d/" in f for f in fell_back) >= 2, fell_back


def test_a_failed_background_save_is_raised_not_lost(tmp_path, monkeypatch):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), background=True)
  started = []

  def fail(step, state, host, config_dict, on_saved=None):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ckpt, "_save_now", fail)
  ckpt.save(10, {"w": np.zeros(3)}, {}, {}, on_saved=started.append)   # returns at once
  with pytest.raises(OSError, match="No space left"):
    ckpt.wait()
  assert started == []
  ckpt.close()   # the error was delivered once; closing is clean


def test_a_failed_last_save_in_a_run_is_an_output_error(tmp_path, monkeypatch):
  def fail(self, step, state, host, config_dict, on_saved=None):
    raise OSError(28, "No space left on device", "checkpoints")

  monkeypatch.setattr(ckpt_lib.Checkpointer, "_save_now", fail)
  c = _config(20, every=10)
  with pytest.raises(train.workdir_lib.OutputError, match="No space left"):
    train.run(c, str(tmp_path / "run"))


UNWRITABLE_ARGS = ["--config", "experiments/mnist1d.py:tiny", "--config.train.progress=false",
                   "--config.train.tensorboard=false", "--config.checkpoint.every=20",
                   "--config.train.log_every=10", "--config.model.hidden=(16,16)"]

# Run as `python -c _REFUSING_MKDIR CHECKPOINTS PDIST_ARGS...`: python -m pdist, in a process whose
# os.mkdir refuses new entries in CHECKPOINTS with EACCES, as a folder chmod 0555 refuses a user
# other than root (root writes into it regardless).
_REFUSING_MKDIR = """
import errno, os, sys
folder, real_mkdir = sys.argv.pop(1), os.mkdir
def mkdir(path, *args, **kwargs):
  if os.path.dirname(os.path.abspath(os.fsdecode(path))) == folder:
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
  return real_mkdir(path, *args, **kwargs)
os.mkdir = mkdir
from pdist.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _refuses_writes(folder) -> bool:
  """Whether this process is refused a new entry in `folder` (not so for root)."""
  try:
    os.mkdir(os.path.join(folder, "probe"))
  except PermissionError:
    return True
  os.rmdir(os.path.join(folder, "probe"))
  return False


def test_an_unwritable_checkpoints_folder_stops_the_run_at_once_in_one_sentence(tmp_path):
  """The folder becomes unwritable between a run and its resumption: the resumed run stops
  within seconds (orbax's background directory creation used to hold the process for its
  5-minute timeout), in one sentence, announces no checkpoint it did not write, and summary.json
  says it stopped and which checkpoint is the last one."""
  from pdist import config as config_lib
  work = tmp_path / "run"
  overrides = [a for a in UNWRITABLE_ARGS if a.startswith("--config.")]
  train.run(config_lib.load(os.path.join(ROOT, UNWRITABLE_ARGS[1]),
                            overrides + ["--config.train.steps=40"]), str(work))
  folder = str(work / "checkpoints")
  committed = sorted(int(n) for n in os.listdir(folder) if n.isdigit())
  assert committed == [20, 40]
  os.chmod(folder, 0o555)
  try:
    args = UNWRITABLE_ARGS + ["--config.train.steps=100", "--workdir", str(work)]
    if _refuses_writes(folder):     # not root: the folder itself refuses
      cmd = [sys.executable, "-m", "pdist", *args]
    else:                           # root: the process's mkdir refuses, with the same error
      cmd = [sys.executable, "-c", _REFUSING_MKDIR, folder, *args]
    began = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=150)
    seconds = time.monotonic() - began
  finally:
    os.chmod(folder, 0o755)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert seconds < 60, seconds       # it ran ~300 s
  assert lines[0] == "pdist: resuming from the checkpoint at update 40", lines
  assert len(lines) == 2 and lines[1].startswith("pdist: training stopped: could not write "
                                                 f"{folder}/"), lines
  assert "Permission denied" in lines[1] and "(update 40)" in lines[1], lines[1]
  assert sorted(int(n) for n in os.listdir(folder) if n.isdigit()) == committed
  summary = metrics.read_json(str(work / "summary.json"))
  assert summary["status"] == "stopped" and "Permission denied" in summary["stopped_because"]
  assert summary["last_checkpoint"] == max(committed) and summary["resumed_from"] == 40


def test_a_checkpoint_that_fails_while_written_is_not_announced(tmp_path, monkeypatch, capsys,
                                                                 caplog):
  """A write that fails after orbax has taken the save (disk full while the files are written):
  no "checkpoint at update" line for it, the run stops with its error, summary.json names the
  last checkpoint committed, and orbax's threads log no tracebacks of it."""
  import builtins
  real_open = builtins.open

  def full_disk_open(path, *args, **kwargs):   # pdist's metadata item of the save at update 30,
    # which orbax writes in its background threads once the save call has returned
    if "checkpoints/30.orbax-checkpoint-tmp/meta" in os.fspath(path):
      raise OSError(28, "No space left on device", os.fspath(path))
    return real_open(path, *args, **kwargs)

  work = str(tmp_path / "run")
  monkeypatch.setattr(builtins, "open", full_disk_open)
  with pytest.raises(train.workdir_lib.OutputError, match="No space left on device") as caught:
    train.run(_config(50, every=10), work)
  monkeypatch.undo()
  err = capsys.readouterr().err
  announced = [int(line.split()[-1]) for line in err.splitlines()
               if line.startswith("pdist: checkpoint at update")]
  assert announced == [10, 20]
  assert "could not be written" not in err     # the failure is reported once, by the caller
  assert ckpt_lib.Checkpointer(os.path.join(work, "checkpoints")).steps() == [10, 20]
  summary = metrics.read_json(os.path.join(work, "summary.json"))
  assert summary["status"] == "stopped" and summary["last_checkpoint"] == 20
  assert caught.value.last_checkpoint == 20
  assert not [r for r in caplog.records if r.levelno >= 40 and "orbax" in r.pathname]


def test_a_resumed_run_logs_each_step_once_to_tensorboard(tmp_path):
  """A run killed after logging past its last checkpoint (here: 30 and 40 logged, only the
  checkpoint at 20 committed, the last event torn) and resumed: the event files hold each step
  once per tag, with the values of an uninterrupted run, and the config once."""
  import shutil
  c = _config(40, every=20)
  c.train.tensorboard = True
  ref, work = tmp_path / "ref", tmp_path / "run"
  train.run(c, str(ref))
  train.run(c, str(work))
  shutil.rmtree(work / "checkpoints" / "40")           # its save never committed
  newest = sorted(glob.glob(str(work / "tensorboard" / "events.out.tfevents.*")))[-1]
  with open(newest, "ab") as f:                        # killed while writing an event
    f.write(b"\x40\x00\x00")
  assert train.run(c, str(work)).summary["resumed_from"] == 20
  want, got = tensorboard_values(str(ref / "tensorboard")), \
      tensorboard_values(str(work / "tensorboard"))
  assert set(got) == set(want) and "loss" in got and "eval_accuracy" in got
  for tag, points in got.items():
    steps = [step for step, _ in points]
    assert sorted(steps) == sorted(set(steps)) == sorted(s for s, _ in want[tag]), tag
    if tag not in metrics.TIMING_FIELDS:
      assert sorted(points) == sorted(want[tag]), tag  # resumed bit for bit
  assert len(got["config/text_summary"]) == 1
  rows = metrics.read(str(work))
  assert sorted(s for s, _ in got["loss"]) == [r["step"] for r in rows] == [10, 20, 30, 40]


def test_fields_newer_than_a_checkpoint_match_at_their_defaults():
  from pdist import config as config_lib
  defaults = config_lib.base_config().to_dict()
  current = load_experiment("mnist1d", "tiny").to_dict()
  saved = {k: v for k, v in current.items() if k != "distill"}      # written before distill
  saved["model"] = {k: v for k, v in current["model"].items() if k != "dtype"}
  assert ckpt_lib.config_differences(saved, current, defaults) == []
  current["model"]["dtype"] = "bfloat16"                              # not the default: differs
  assert ckpt_lib.config_differences(saved, current, defaults) == ["model.dtype"]
