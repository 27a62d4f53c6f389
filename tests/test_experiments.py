"""Every experiment config runs with :tiny; the command line works end to end."""

import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import EXPERIMENTS, ROOT, load_experiment, tensorboard_values
from pdist import metrics, plots, train

NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(EXPERIMENTS, "*.py")))
# experiments whose :tiny preset is trained by their own test file already (time budget)
RUN_ELSEWHERE = {"fedavg": "test_federated.py", "charlm": "test_language.py",
                 "codistill": "test_codistill.py", "distill": "test_distill.py",
                 "ps_ray": "test_ps_ray.py"}


def test_every_experiment_runs_tiny_somewhere():
  for name, where in RUN_ELSEWHERE.items():
    assert name in NAMES
    with open(os.path.join(ROOT, "tests", where)) as f:
      assert f'experiment("{name}"' in f.read(), (name, where)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in RUN_ELSEWHERE])
def test_experiment_runs_tiny(name, tmp_path):
  config = load_experiment(name, "tiny")
  config.train.progress = False
  result = train.run(config, str(tmp_path))
  rows = metrics.read(str(tmp_path))
  assert rows and rows[-1]["step"] == config.train.steps
  assert result.summary["steps"] == config.train.steps


def _preset_pairs():
  from pdist import config as config_lib
  pairs = []
  for name in NAMES:
    module, _ = config_lib.load_experiment(os.path.join(EXPERIMENTS, f"{name}.py"))
    pairs += [(name, preset) for preset in sorted(module.PRESETS) if preset != "tiny"]
  return pairs


PAIRS = _preset_pairs()


def _tiny_pair(name, preset):
  from pdist import config as config_lib
  path = os.path.join(EXPERIMENTS, f"{name}.py")
  first = config_lib.load(f"{path}:tiny,{preset}")
  second = config_lib.load(f"{path}:{preset},tiny")
  return first, second, config_lib.load(f"{path}:tiny")


@pytest.mark.parametrize("name, preset", PAIRS, ids=[f"{n}:{p}" for n, p in PAIRS])
def test_every_preset_combines_with_tiny_in_either_order(name, preset):
  """`tiny` wins wherever it is written: "tiny,P" and "P,tiny" are one valid config, as short as
  the experiment's own tiny (each pair trains in test_every_preset_trains_with_tiny)."""
  from pdist import config as config_lib
  first, second, alone = _tiny_pair(name, preset)
  assert first.to_dict() == second.to_dict()
  assert first.train.steps == alone.train.steps
  assert first.data.num_train == alone.data.num_train
  config_lib.validate(first)


@pytest.mark.long
@pytest.mark.parametrize("name, preset", PAIRS, ids=[f"{n}:{p}" for n, p in PAIRS])
def test_every_preset_trains_with_tiny(name, preset, tmp_path):
  """Each "tiny,P" trains its first rows (ps on Ray only validated here: each Ray start costs
  seconds; test_ps_ray.py runs its presets). In `make test-all`: ~3 s each, ~70 pairs."""
  first, _, _ = _tiny_pair(name, preset)
  if first.strategy == "ps" and first.ps.backend == "ray":
    return
  first.train.progress, first.train.tensorboard = False, False
  # its first rows: a short run builds and compiles everything the whole one would
  first.train.steps = first.train.log_every = first.train.eval_every = 2
  first.checkpoint.every = 0
  first.optim.warmup_steps = min(first.optim.warmup_steps, 2)
  result = train.run(first, str(tmp_path))
  assert result.summary["steps"] == 2 and result.rows[-1]["step"] == 2


def test_every_command_in_the_experiment_cards_loads():
  """The commands each experiment's docstring gives (its card) name a loadable config."""
  import re
  from pdist import config as config_lib
  found = 0
  for name in NAMES:
    card = config_lib.load_experiment(os.path.join(EXPERIMENTS, f"{name}.py"))[0].__doc__ or ""
    # options such as --local_devices 8 may come before --config
    commands = re.findall(r"python -m pdist(?:\.sweep)?(?: --[a-z_]+ \S+)*? --config (\S+)(.*)",
                          card)
    assert commands, f"experiments/{name}.py gives no command in its docstring"
    for spec, rest in commands:
      overrides = re.findall(r"--config\.\S+=\S+", rest)
      config = config_lib.load(os.path.join(ROOT, spec), overrides)
      assert config.train.steps > 0
      found += 1
  assert found >= len(NAMES)


@pytest.mark.slow
def test_command_line_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "pdist", "--config", "experiments/mnist1d.py:cnn,tiny",
       "--workdir", str(workdir), "--config.train.steps", "40"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  final = json.loads(proc.stdout.splitlines()[0])
  assert final["step"] == 40 and 0 <= final["eval_accuracy"] <= 1
  assert "step/s" in proc.stderr  # the tqdm progress bar
  for f in ("config.json", "metrics.jsonl", "summary.json"):
    assert (workdir / f).is_file()
  proc = subprocess.run([sys.executable, "-m", "pdist.plots", str(workdir)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  png = workdir / "curves.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_overlays_several_runs(tmp_path):
  dirs = []
  for lr in (0.01, 0.001):
    d = str(tmp_path / f"lr{lr}")
    c = load_experiment("mnist1d", "tiny")
    c.train.progress, c.optim.learning_rate = False, lr
    train.run(c, d)
    dirs.append(d)
  out = plots.plot_runs(dirs, str(tmp_path / "both.png"), labels=["lr 0.01", "lr 0.001"])
  assert out == str(tmp_path / "both.png") and os.path.getsize(out) > 10_000
  assert plots.main([str(tmp_path / "missing")]) == 2
  assert plots.main(dirs) == 2  # several runs need --out: no run's own figure is overwritten
  assert not os.path.exists(os.path.join(dirs[0], "curves.png"))
  assert plots.main([*dirs, "--out", str(tmp_path / "cmp.png")]) == 0


def test_sweep_runs_every_variant_and_plots(tmp_path):
  from pdist import sweep
  summaries = sweep.run_sweep(os.path.join(EXPERIMENTS, "large_batch.py") + ":tiny",
                              str(tmp_path), ["--config.train.progress=False"])
  assert [s["variant"] for s in summaries] == ["small", "large_scaled", "large"]
  assert {s["step"] for s in summaries} == {20}
  for png in ("curves.png", "curves_epoch.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
  assert all(s["status"] == "completed" for s in summaries)
  # the scaled variant really ran at 8x the learning rate of `small`
  scaled = json.load(open(tmp_path / "large_scaled" / "config.json"))
  assert scaled["data"]["batch_size"] == 256 and scaled["optim"]["base_batch_size"] == 32


def test_the_sweep_command_line_wins_over_the_variants(capsys):
  from pdist import config as config_lib
  from pdist import sweep
  spec = os.path.join(EXPERIMENTS, "large_batch.py") + ":tiny"
  got = sweep.configs(spec, ["--config.train.steps=12"])
  assert [(n, c.train.steps) for n, _, c in got] == [("small", 12), ("large_scaled", 12),
                                                      ("large", 12)]
  assert [c.data.batch_size for _, _, c in got] == [32, 256, 256]   # the rest stays the variant's
  err = capsys.readouterr().err
  assert "large: the command line's config.train.steps=12 replaces the variant's 20" in err
  with pytest.raises(config_lib.ConfigError, match="makes every variant .* the same run"):
    sweep.configs(spec, ["--config.data.batch_size=64", "--config.optim.base_batch_size=0",
                         "--config.optim.schedule='constant'", "--config.optim.warmup_steps=0",
                         "--config.train.log_every=5", "--config.train.eval_every=10"])


def test_sweep_records_a_diverged_variant_and_goes_on(tmp_path):
  from pdist import sweep
  exp = tmp_path / "lrs.py"
  exp.write_text(
      "from pdist.config import apply_presets, base_config, tiny\n"
      "def get_config(arg=None):\n"
      "  c = base_config()\n"
      "  c.model.hidden = (16,)\n"
      "  return apply_presets(c, arg, {'tiny': tiny}, 'lrs')\n"
      "def get_hyper(arg=None):\n"
      "  return [('huge', {'optim.learning_rate': 1e30}), ('fine', {'optim.learning_rate': 0.01})]\n")
  summaries = sweep.run_sweep(f"{exp}:tiny", str(tmp_path / "out"),
                              ["--config.train.progress=False"])
  assert [s["status"] for s in summaries] == ["diverged", "completed"]
  assert summaries[0]["diverged_at"] == 10 and summaries[1]["step"] == 20
  saved = json.load(open(tmp_path / "out" / "sweep.json"))
  assert [s["status"] for s in saved] == ["diverged", "completed"]
  assert (tmp_path / "out" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_of_a_broken_file_is_one_sentence(tmp_path, capsys):
  from pdist import sweep
  bad = tmp_path / "bad.py"
  bad.write_text("import nonexistent_module_xyz\n")
  assert sweep.main(["--config", str(bad), "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err
  assert "failed to load: ModuleNotFoundError" in err and "Traceback" not in err
  assert len(err.strip().splitlines()) == 1


def test_tensorboard_events_hold_every_metric(tmp_path):
  config = load_experiment("mnist1d", "tiny")
  config.train.progress = False
  train.run(config, str(tmp_path))
  scalars = tensorboard_values(str(tmp_path / "tensorboard"))
  rows = metrics.read(str(tmp_path))
  for key in ("loss", "accuracy", "eval_loss", "eval_accuracy", "epoch"):
    want = [(r["step"], r[key]) for r in rows if key in r]
    got = scalars[key]
    assert [s for s, _ in got] == [s for s, _ in want]
    assert all(abs(a - b) <= 1e-6 * max(1, abs(b)) for (_, a), (_, b) in zip(got, want))
  config.train.tensorboard = False
  train.run(config, str(tmp_path / "off"))
  assert not (tmp_path / "off" / "tensorboard").exists()
