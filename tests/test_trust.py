"""Trust: every bad input is one sentence with its status, one run per workdir, a finished run
stays finished, resume never silently changes the math, and results carry their provenance."""

import json
import os
import signal
import subprocess
import sys

import jax
import pytest

from conftest import EXPERIMENTS, ROOT, load_experiment
from pdist import plots, train, workdir
from pdist.__main__ import main

MNIST = os.path.join(EXPERIMENTS, "mnist1d.py") + ":tiny"


def _main(args, tmp_path, capsys, spec=MNIST, workdir_path=None):
  wd = str(tmp_path / "w") if workdir_path is None else workdir_path
  code = main(["--config", spec, "--workdir", wd, "--config.train.progress=False", *args])
  return code, capsys.readouterr().err


# (command-line arguments, exit status, a fragment of the one line printed)
CATALOGUE = [
    (["--config.train.steps=True"], 2, "config.train.steps must be of type int, got True"),
    (["--config.optim.name=adam", "--config.optim.momentum=0.9"], 2,
     "config.optim.momentum=0.9 does not apply to config.optim.name='adam'"),
    (["--config.optim.name=adam", "--config.optim.weight_decay=0.1"], 2,
     "config.optim.weight_decay=0.1 does not apply to config.optim.name='adam'"),
    (["--config.train.seeds=4", "--config.strategy=ps"], 2,
     "config.train.seeds=4 runs vmapped copies of config.strategy='single' only"),
    (["--config.optim.name=sgd", "--config.optim.nesterov=true"], 2,
     "config.optim.nesterov=True needs config.optim.momentum > 0"),
    (["--config.data.num_classes=5"], 2,
     "config.data.num_classes=5 does not apply to config.data.name='mnist1d'"),
    (["--config.data.name=digits", "--config.data.num_train=100000"], 2,
     "config.data.num_train=100000 but digits has 1497 examples there"),
    (["--config.optim.schedule=warmup", "--config.optim.warmup_steps=100"], 2,
     "config.optim.warmup_steps=100 is longer than the run"),
    (["--config.optim.warmup_steps=5"], 2,
     "config.optim.warmup_steps=5 does not apply to config.optim.schedule='constant'"),
    (["--config.strategy=ps", "--config.ps.stragglers.fraction=0.1"], 2,
     "config.ps.stragglers.fraction=0.1 of 4 workers rounds to no straggler"),
    (["--config.optim.learning_rate=nan"], 2, "config.optim.learning_rate must be a finite number"),
    (["--config.optim.learning_rate=1e999"], 2,
     "config.optim.learning_rate must be a finite number, got inf"),
    (["--config.train.seed=-1"], 2, "config.train.seed must be non-negative, got -1"),
    (["--process_id=5"], 2, "--process_id=5 must be in [0, --num_processes=1)"),
    (["--config.optim.learning_rate=1e30", "--config.optim.name=sgd"], 3,
     "the training loss became"),
]


@pytest.mark.parametrize("args, status, message", CATALOGUE)
def test_catalogue_of_bad_inputs(args, status, message, tmp_path, capsys):
  code, err = _main(args, tmp_path, capsys)
  assert code == status, err
  assert message in err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_bad_paths_are_one_sentence(tmp_path, capsys):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  for path, message in ((str(a_file), "is a file, not a directory"),
                        ("", "must name a directory, got an empty string")):
    code, err = _main([], tmp_path, capsys, workdir_path=path)
    assert code == 2 and message in err and "Traceback" not in err
  code, err = _main([], tmp_path, capsys, spec=EXPERIMENTS)
  assert code == 2 and "is a directory; name an experiment file in it" in err
  blocked = tmp_path / "blocked"
  (blocked / "metrics.jsonl").mkdir(parents=True)
  code, err = _main([], tmp_path, capsys, workdir_path=str(blocked))
  assert code == 2 and "metrics.jsonl: a directory is in the way" in err
  assert not (blocked / "checkpoints").exists()  # nothing was started


def test_plots_refuse_an_unknown_axis(tmp_path, capsys):
  code, _ = _main([], tmp_path, capsys)
  assert code == 0
  assert plots.main([str(tmp_path / "w"), "--x", "wall_clock"]) == 2
  assert "--x wall_clock is not in these metrics; choose from: epoch, step" in \
      capsys.readouterr().err


def test_a_second_run_on_a_locked_workdir_stops_at_once(tmp_path, capsys):
  held = workdir.Lock(str(tmp_path / "w"))
  os.makedirs(tmp_path / "w")
  held.acquire()
  try:
    code, err = _main([], tmp_path, capsys)
    assert code == 2 and "is in use by another pdist run (pid " in err and str(os.getpid()) in err
  finally:
    held.release()
  code, err = _main([], tmp_path, capsys)
  assert code == 0


@pytest.mark.slow
def test_lock_is_held_by_a_running_run_and_freed_when_it_is_killed(tmp_path, capsys):
  wd = str(tmp_path / "w")
  cmd = [sys.executable, "-m", "pdist", "--config", "experiments/mnist1d.py:tiny", "--workdir", wd,
         "--config.train.steps=100000", "--config.train.log_every=20",
         "--config.checkpoint.every=20", "--config.train.progress=False"]
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                          stdout=subprocess.DEVNULL)
  try:
    seen = 0
    for line in proc.stderr:  # the second save starts after the first has been committed
      seen += line.startswith("pdist: checkpoint at update")
      if seen == 2:
        break
    code, err = _main(["--config.train.steps=100000", "--config.train.log_every=20",
                       "--config.checkpoint.every=20"], tmp_path, capsys)
    assert code == 2 and f"in use by another pdist run (pid {proc.pid}" in err
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  # the kernel released the lock with the process: the run resumes from its checkpoint
  code, err = _main(["--config.train.steps=40", "--config.train.log_every=20",
                     "--config.checkpoint.every=20"], tmp_path, capsys)
  assert code == 0 and "resuming from the checkpoint at update" in err


def test_a_finished_run_rerun_says_so_and_changes_nothing(tmp_path, capsys):
  assert _main([], tmp_path, capsys)[0] == 0
  summary = (tmp_path / "w" / "summary.json").read_bytes()
  rows = (tmp_path / "w" / "metrics.jsonl").read_bytes()
  code, err = _main([], tmp_path, capsys)
  assert code == 0 and "already holds a finished run (60 of 60 updates); nothing to do" in err
  assert (tmp_path / "w" / "summary.json").read_bytes() == summary
  assert (tmp_path / "w" / "metrics.jsonl").read_bytes() == rows


def test_resume_with_more_steps_is_refused_when_steps_shape_the_schedule(tmp_path, capsys):
  args = ["--config.checkpoint.every=20", "--config.optim.schedule=cosine"]
  assert _main(args, tmp_path, capsys)[0] == 0
  code, err = _main(args + ["--config.train.steps=100"], tmp_path, capsys)
  assert code == 2 and "different config (config.train.steps)" in err


def test_removed_metrics_are_reported_on_resume(tmp_path, capsys):
  args = ["--config.checkpoint.every=20", "--config.train.log_every=20"]
  assert _main(args + ["--config.train.steps=40"], tmp_path, capsys)[0] == 0
  os.remove(tmp_path / "w" / "metrics.jsonl")
  code, err = _main(args + ["--config.train.steps=60"], tmp_path, capsys)
  assert code == 0 and "has no row for update 40 (removed or cut short)" in err


def test_summary_records_provenance(tmp_path, capsys):
  assert _main([], tmp_path, capsys)[0] == 0
  prov = json.load(open(tmp_path / "w" / "summary.json"))["provenance"]
  assert prov["versions"]["jax"] == jax.__version__
  assert prov["devices"]["count"] == jax.device_count() and prov["processes"] == 1
  assert prov["command"][:3] == ["python", "-m", "pdist"] and MNIST in prov["command"]
  assert "pdist_commit" in prov and "pdist_tree_dirty" in prov


def test_default_config_checkpoints_so_a_killed_run_can_resume():
  c = load_experiment("mnist1d", "")
  assert c.checkpoint.every > 0


def test_help_lists_experiments_and_print_config_shows_the_resolved_config(capsys):
  with pytest.raises(SystemExit) as e:
    main(["--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0
  assert "experiments/dp.py" in out and "presets: tiny, digits, nonprivate, pld" in out
  assert "75  preempted" in out
  assert main(["--config", MNIST, "--print_config", "--config.optim.learning_rate=0.5"]) == 0
  config = json.loads(capsys.readouterr().out)
  assert config["optim"]["learning_rate"] == 0.5 and config["train"]["steps"] == 60
  from pdist import launch, sweep
  for entry in (launch.main, sweep.main):
    with pytest.raises(SystemExit) as e:
      entry(["--help"])
    assert e.value.code == 0 and "usage: python -m pdist." in capsys.readouterr().out
