"""Knowledge distillation: weight 0 is plain training, the soft term's gradient is its closed
form, the teacher must be a finished compatible workdir."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import EXPERIMENTS, load_experiment
from pdist import distill, train
from pdist.__main__ import main


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  c = load_experiment("mnist1d", "tiny")
  c.model.hidden = (32,)
  c.train.progress, c.train.save_params, c.train.tensorboard = False, True, False
  workdir = str(tmp_path_factory.mktemp("teacher"))
  train.run(c, workdir)
  return workdir


def _student(teacher_dir="", **distill_fields):
  c = load_experiment("distill", "tiny")
  c.train.progress, c.train.tensorboard = False, False
  c.model.hidden = (16,)
  c.distill.teacher = teacher_dir
  for k, v in distill_fields.items():
    c.distill[k] = v
  return c


def test_weight_zero_is_plain_training(teacher):
  plain = train.run(_student())
  distilled = train.run(_student(teacher, weight=0.0, temperature=3.0))
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(distilled.params)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  moved = train.run(_student(teacher, weight=0.5, temperature=3.0))
  assert not np.array_equal(np.asarray(jax.tree.leaves(plain.params)[0]),
                            np.asarray(jax.tree.leaves(moved.params)[0]))  # the teacher matters


def test_soft_term_gradient_is_its_closed_form():
  rng = np.random.default_rng(0)
  s, t = (jnp.asarray(rng.normal(size=(3, 5)) * 3, jnp.float32) for _ in range(2))
  for temperature in (1.0, 2.5, 8.0):
    grad = jax.grad(lambda z: distill.soft_loss(z, t, temperature).sum())(s)
    closed = temperature * (jax.nn.softmax(s / temperature) - jax.nn.softmax(t / temperature))
    assert np.allclose(np.asarray(grad), np.asarray(closed), atol=1e-5)
  assert np.allclose(np.asarray(distill.soft_loss(t, t, 2.0)), 0.0, atol=1e-6)


def test_bad_teacher_input_gives_one_clear_line(teacher, tmp_path, capsys):
  import pathlib
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(pathlib.Path(teacher, "config.json").read_text())
  cases = [
      (["--config.distill.teacher=" + str(empty)], "has no finished parameters (params.npz)"),
      (["--config.distill.teacher=" + str(tmp_path / "nowhere")], "is not a pdist workdir"),
      (["--config.distill.teacher=" + teacher, "--config.distill.temperature=0"],
       "config.distill.temperature must be positive"),
      (["--config.distill.teacher=" + teacher, "--config.privacy.mechanism=dpsgd"],
       "the teacher is not private"),
      (["--config.distill.teacher=" + teacher, "--config.data.name=digits",
        "--config.data.num_train=400", "--config.data.num_test=200"],
       "was trained on config.data.name='mnist1d', not 'digits'"),
  ]
  for args, message in cases:
    code = main(["--config", f"{EXPERIMENTS}/distill.py:tiny", "--workdir",
                 str(tmp_path / "w")] + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_teacher_of_several_seeds_is_refused_naming_them(tmp_path, capsys):
  """A train.seeds=3 run holds three models: as a teacher it is one sentence that names its
  seeds and how to get one of them alone, and the student does not start."""
  c = load_experiment("mnist1d", "tiny")
  c.model.hidden, c.train.seeds = (16,), 3
  c.train.progress, c.train.save_params, c.train.tensorboard = False, True, False
  teacher = str(tmp_path / "seeds")
  train.run(c, teacher)
  capsys.readouterr()
  student = tmp_path / "student"
  code = main(["--config", f"{EXPERIMENTS}/distill.py:tiny", "--workdir", str(student),
               "--config.distill.teacher=" + teacher])
  err = capsys.readouterr().err
  assert code == 2, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert ("trained 3 copies at once (config.train.seeds=3, seeds 0 to 2)" in err
          and "--config.train.seeds=1 --config.train.seed=S, S one of 0, 1, 2" in err), err
  assert not (student / "metrics.jsonl").exists()


def test_ray_workers_distil_from_the_teacher_they_are_sent(teacher):
  """ps on Ray: the driver loads the teacher and ships it (pickled, as Ray does) to each worker
  process, whose gradient then carries the soft term; the body of the actor runs here."""
  import pickle

  from pdist import artifacts, data, tasks
  from pdist.strategies.ps_ray import Flat, WorkerProcess
  c = _student(teacher, weight=0.5, temperature=3.0)
  dataset = data.load(c.data)
  sent = pickle.loads(pickle.dumps(artifacts.load_teacher(c, dataset)))
  params = tasks.build(c, dataset).init(jax.random.PRNGKey(1))
  flat = Flat(params).ravel(params)
  _, distilled, _ = WorkerProcess(c, 0, None, sent).compute(flat, 3)
  _, plain, _ = WorkerProcess(c, 0, None, None).compute(flat, 3)
  assert "hard_loss" in distilled and "hard_loss" not in plain
  assert distilled["hard_loss"] == pytest.approx(plain["loss"], rel=1e-6)   # the same batch
  assert abs(distilled["loss"] - plain["loss"]) > 1e-3                     # and the soft term
