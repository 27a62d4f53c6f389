"""The single-device strategy against hand-written updates, and the train loop's invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_one_clear_line, load_experiment
from pdist import data, metrics, optim, strategies, tasks, train


def _config(**overrides):
  c = load_experiment("mnist1d", "tiny")
  c.train.progress = False
  for k, v in overrides.items():
    group, field = k.split("__")
    c[group][field] = v
  return c


def test_single_equals_hand_written_sgd():
  c = _config(optim__name="sgd", optim__learning_rate=0.05, optim__momentum=0.0,
              train__steps=12, train__log_every=5, train__eval_every=0)
  result = train.run(c)
  ds = data.load(c.data)
  task = tasks.build(c, ds)
  params = task.init(jax.random.PRNGKey(c.train.seed))
  grad = jax.jit(jax.grad(lambda p, b: task.loss(p, b, None)[0]))
  for step in range(12):
    idx = data.batch_indices(c.train.seed, step, c.data.batch_size, ds.num_train)[0]
    g = grad(params, {"x": ds.x_train[idx], "y": ds.y_train[idx]})
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, g)
  for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunking_does_not_change_the_result():
  a = train.run(_config(train__steps=30, train__log_every=1, train__eval_every=0))
  b = train.run(_config(train__steps=30, train__log_every=30, train__eval_every=0))
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("extra", [
    {},
    {"strategy": "sync", "sync__devices": 2},
    {"privacy__mechanism": "dpsgd", "privacy__noise_multiplier": 1.0, "privacy__clip_norm": 1.0,
     "data__batch_size": 32},
], ids=["single", "sync", "dp"])
def test_calls_of_several_rows_give_the_same_rows_and_parameters(extra, tmp_path):
  """train.updates_per_call lets one compiled call cover several log rows: every row (each the
  mean of its own updates, epsilon at its own step) and the parameters stay bit for bit."""
  runs = {}
  grouped = (20, 1000) if not extra else (1000,)  # 4 rows a call; as many as fit before a stop
  steps = 65 if not extra else 35  # the others more briefly: the suite's time
  for per_call in (1, *grouped):
    c = _config(train__steps=steps, train__log_every=5, train__eval_every=30,
                train__updates_per_call=per_call, checkpoint__every=40)
    for k, v in extra.items():
      if k == "strategy":
        c.strategy = v
      else:
        group, field = k.split("__")
        c[group][field] = v
    runs[per_call] = train.run(c, str(tmp_path / str(per_call)))
  want = metrics.without_timing(runs[1].rows)
  assert [r["step"] for r in want] == list(range(5, steps + 1, 5))
  assert [r["step"] for r in want if "eval_accuracy" in r] == ([30, 60, 65] if steps == 65
                                                                else [30, 35])
  for per_call in grouped:
    assert metrics.without_timing(runs[per_call].rows) == want
    for a, b in zip(jax.tree.leaves(runs[1].params), jax.tree.leaves(runs[per_call].params)):
      np.testing.assert_array_equal(a, b)
    released = [runs[per_call].strategy.released(r) for r in want]   # DP: no private stats
    assert metrics.without_timing(metrics.read(str(tmp_path / str(per_call)))) == released
  if "privacy__mechanism" in extra:
    eps = [r["epsilon"] for r in want]
    assert eps == sorted(eps) and eps[0] < eps[-1]  # each row's own step's budget


def test_call_size_is_decided_by_time_on_accelerators(monkeypatch):
  c = _config(train__log_every=10, train__steps=100000)
  assert train._CallSize(c, segmented=True).decided  # a CPU host: one row a call
  monkeypatch.setattr(train.jax, "default_backend", lambda: "gpu")
  fast = train._CallSize(c, segmented=True)
  fast.observe(10, 0.5, 99990)      # the first call compiles: not used
  assert not fast.decided
  fast.observe(10, 0.004, 99980)    # 4 ms a call: 0.05 s / 4 ms = 12 -> 8 rows
  assert fast.decided and fast.rows == 8
  fast.observe(80, 0.0001, 99900)   # decided once: no further programs
  assert fast.rows == 8
  short = train._CallSize(c, segmented=True)
  short.observe(10, 0.5, 200)
  short.observe(10, 0.004, 190)     # 0.08 s of work left: not worth another compilation
  assert short.decided and short.rows == 1
  slow = train._CallSize(c, segmented=True)
  slow.observe(10, 0.5, 99990)
  slow.observe(10, 0.2, 99980)      # a call already long enough
  assert slow.rows == 1
  assert train._CallSize(c, segmented=False).rows == 1  # e.g. ps: one row a call
  c.train.updates_per_call = 55     # fixed: 5 rows' worth -> 4 (a power of two)
  assert train._CallSize(c, segmented=True).rows == 4
  c.train.updates_per_call = 0      # several processes: never sized by each one's own clock
  monkeypatch.setattr(train.jax, "process_count", lambda: 2)
  assert train._CallSize(c, segmented=True).decided


def test_updates_per_call_says_what_it_became(tmp_path, capsys):
  c = _config(train__steps=35, train__log_every=5, train__eval_every=0,
              train__updates_per_call=1000000)
  result = train.run(c, str(tmp_path))
  err = capsys.readouterr().err
  assert ("config.train.updates_per_call=1000000: a compiled call covers whole log rows, a power "
          "of two of them and at most 64: 64 row(s) of 5 updates (320 updates)") in err
  # 7 rows to the end: calls of 4, 2 and 1 rows (powers of two), so 20 updates at most
  assert result.summary["updates_per_call_used"] == 20
  assert metrics.read_json(str(tmp_path / "summary.json"))["updates_per_call_used"] == 20
  exact = train.run(_config(train__steps=35, train__log_every=5, train__eval_every=0,
                            train__updates_per_call=20))
  assert "updates_per_call" not in capsys.readouterr().err   # taken as it is: nothing to say
  assert exact.summary["updates_per_call_used"] == 20


@pytest.mark.parametrize("args, what", [
    (["--config.strategy=ps"], "config.strategy='ps'"),
    (["--config.train.seeds=2"], "config.train.seeds=2"),
    (["--config.strategy=sync", "--config.sync.backend=pmap", "--config.data.batch_size=96"],
     "config.strategy='sync' with config.sync.backend='pmap'"),
])
def test_updates_per_call_is_refused_where_it_cannot_take_effect(args, what, tmp_path, capsys):
  assert_one_clear_line("mnist1d.py:tiny", ["--config.train.updates_per_call=100", *args],
                        f"config.train.updates_per_call=100 cannot take effect: {what} runs one "
                        "log row a compiled call", tmp_path / "w", capsys)


def test_a_resumed_run_may_change_updates_per_call(tmp_path):
  straight = train.run(_config(train__steps=40, train__log_every=5, train__eval_every=0))
  c = _config(train__steps=20, train__log_every=5, train__eval_every=0)
  train.run(c, str(tmp_path))
  c.train.steps, c.train.updates_per_call = 40, 1000
  resumed = train.run(c, str(tmp_path))
  assert resumed.summary["resumed_from"] == 20
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  def training(rows):  # the shorter first run also evaluated at its end (update 20)
    return [{k: v for k, v in r.items() if not k.startswith("eval_")}
            for r in metrics.without_timing(rows)]
  assert training(metrics.read(str(tmp_path))) == training(straight.rows)


def test_a_call_of_several_rows_names_the_update_that_diverged():
  c = _config(train__steps=40, train__log_every=5, train__eval_every=0,
              train__updates_per_call=40, optim__learning_rate=1e30)
  with pytest.raises(train.Diverged) as one_call:
    train.run(c)
  c.train.updates_per_call = 5
  with pytest.raises(train.Diverged) as one_row:
    train.run(c)
  assert one_call.value.step == one_row.value.step < 40


def test_two_runs_give_identical_metrics(tmp_path):
  for name in ("a", "b"):
    train.run(_config(optim__name="adam", optim__learning_rate=0.01), str(tmp_path / name))
  ra, rb = metrics.read(str(tmp_path / "a")), metrics.read(str(tmp_path / "b"))
  assert metrics.without_timing(ra) == metrics.without_timing(rb)
  assert len(ra) >= 3 and all("steps_per_sec" in r for r in ra)


def test_metrics_rows_and_summary(tmp_path):
  c = _config(train__steps=60, train__log_every=20, train__eval_every=30)
  train.run(c, str(tmp_path))
  rows = metrics.read(str(tmp_path))
  assert [r["step"] for r in rows] == [20, 30, 40, 60]
  assert all("loss" in r for r in rows)
  assert [r["step"] for r in rows if "eval_accuracy" in r] == [30, 60]
  summary = __import__("json").load(open(tmp_path / "summary.json"))
  assert summary["step"] == 60 and summary["updates_per_sec"] > 0
  assert summary["eval_accuracy"] == rows[-1]["eval_accuracy"]
  cfg = __import__("json").load(open(tmp_path / "config.json"))
  assert cfg["train"]["steps"] == 60 and cfg["model"]["name"] == c.model.name


@pytest.mark.slow
def test_training_learns_mnist1d_cnn():
  c = _config(model__name="cnn1d", optim__name="adam", optim__learning_rate=3e-3,
              train__steps=300, train__log_every=300)
  c.data.num_train, c.data.num_test = 4000, 1000
  c.model.hidden = (16, 16, 16)
  summary = train.run(c).summary
  assert summary["eval_accuracy"] > 0.5  # chance is 0.1


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [1.0, 1.0, 1.0]),
    ("warmup", [0.0, 0.5, 1.0]),
    ("cosine", [1.0, 0.5, 0.0]),
])
def test_schedules(schedule, expected):
  c = _config(optim__learning_rate=1.0, optim__schedule=schedule, optim__warmup_steps=10,
              train__steps=20)
  lr = optim.schedule(c)
  np.testing.assert_allclose([lr(0), lr(5 if schedule == "warmup" else 10), lr(20)
                              if schedule != "warmup" else lr(10)], expected, atol=1e-6)


def test_step_decay_and_warmup_from_a_fraction_of_the_rate():
  """Goyal et al. 2017's recipe: warmup from lr/k over 5 updates, then x0.1 at 10 and 20."""
  c = _config(optim__learning_rate=1.0, optim__schedule="warmup_step", optim__warmup_steps=5,
              optim__warmup_from=0.125, train__steps=30)
  c.optim.decay_steps = (10, 20)
  lr = optim.schedule(c)
  np.testing.assert_allclose([lr(0), lr(5), lr(9), lr(10), lr(19), lr(20), lr(29)],
                             [0.125, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
  c.optim.schedule, c.optim.warmup_steps, c.optim.warmup_from = "step", 0, 0.0
  lr = optim.schedule(c)
  np.testing.assert_allclose([lr(0), lr(10), lr(25)], [1.0, 0.1, 0.01], rtol=1e-6)


def test_sgd_weight_decay_adds_lambda_theta_to_the_gradient():
  c = _config(optim__name="sgd", optim__learning_rate=0.1, optim__weight_decay=0.01)
  tx = optim.build(c)
  p, g = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 0.5])}
  updates, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(updates["w"], -0.1 * (np.array([0.5, 0.5]) + 0.01 * np.array([1.0, -2.0])),
                             rtol=1e-6)


def test_one_update_is_heavy_ball_momentum_on_the_batch():
  """Single.update on a hand-built batch, twice, against v <- m v + g; theta <- theta - lr v."""
  c = _config(optim__name="sgd", optim__learning_rate=0.1, optim__momentum=0.9)
  strategy = strategies.build(c, tasks.build(c, data.load(c.data)))
  state = strategy.init(jax.random.PRNGKey(3))
  ds = strategy.task.dataset
  batch = {"x": jnp.asarray(ds.x_train[:7]), "y": jnp.asarray(ds.y_train[:7])}
  params = jax.device_get(state["params"])
  velocity = jax.tree.map(np.zeros_like, params)
  update = jax.jit(strategy.update)
  for _ in range(2):
    (loss, aux), g = jax.value_and_grad(lambda p: strategy.task.loss(p, batch, None),
                                        has_aux=True)(params)
    state, m = update(state, batch)
    velocity = jax.tree.map(lambda v, g: 0.9 * v + g, velocity, g)
    params = jax.tree.map(lambda p, v: p - 0.1 * v, params, velocity)
    assert float(m["loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(float(aux["accuracy"]))
  assert int(state["step"]) == 2
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mask_weights_the_loss_as_dropping_the_examples():
  c = _config()
  task = tasks.build(c, data.load(c.data))
  params = task.init(jax.random.PRNGKey(0))
  x, y = task.dataset.x_train[:10], task.dataset.y_train[:10]
  mask = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1, 0], np.float32)
  masked, aux = task.loss(params, {"x": x, "y": y, "mask": mask}, None)
  kept, aux_kept = task.loss(params, {"x": x[mask > 0], "y": y[mask > 0]}, None)
  assert float(masked) == pytest.approx(float(kept), rel=1e-6)
  assert float(aux["accuracy"]) == pytest.approx(float(aux_kept["accuracy"]))
  losses, _ = task.per_example_loss(params, {"x": x, "y": y}, None)
  assert losses.shape == (10,) and task.apply(params, x).shape == (10, 10)


@pytest.mark.parametrize("dataset, model", [("digits", "cnn2d"), ("teacher", "mlp"),
                                            ("regression", "linear"), ("mnist1d", "cnn1d")])
def test_every_dataset_model_pair_trains(dataset, model):
  c = _config(data__name=dataset, model__name=model, optim__name="adam",
              optim__learning_rate=0.01, train__steps=40, train__log_every=40)
  c.data.num_train, c.data.num_test = 512, 128
  if dataset in ("teacher", "regression"):
    c.data.dim = 32
  if model != "linear":   # linear has no hidden layers (and refuses the field)
    c.model.hidden = (16,)
  r = train.run(c)
  first_loss = float(r.strategy.task.loss(
      r.strategy.task.init(jax.random.PRNGKey(0)),
      {"x": r.strategy.task.dataset.x_test, "y": r.strategy.task.dataset.y_test}, None)[0])
  assert r.summary["eval_loss"] < first_loss


def test_excess_loss_is_zero_at_the_least_squares_solution_and_positive_elsewhere():
  c = load_experiment("least_squares", "tiny")
  c.train.progress = False
  task = tasks.build(c, data.load(c.data))
  ds = task.dataset
  xs = np.concatenate([ds.x_train.astype(np.float64), np.ones((ds.num_train, 1))], axis=1)
  w, *_ = np.linalg.lstsq(xs, ds.y_train.astype(np.float64), rcond=None)
  params = task.init(jax.random.PRNGKey(0))
  best = {"Dense_0": {"kernel": jnp.asarray(w[:-1], jnp.float32),
                      "bias": jnp.asarray(w[-1], jnp.float32)}}
  assert abs(task.evaluate(best)["excess_loss"]) < 1e-6
  assert task.evaluate(params)["excess_loss"] > 0.1
  rows = train.run(c).rows
  assert [r["excess_loss"] for r in rows if "excess_loss" in r][-1] < 0.05


def test_vmapped_seeds_are_the_separate_runs(tmp_path):
  """train.seeds=3 in one program: copy i equals the run with seed i, row by row."""
  c = _config(optim__name="sgd", optim__learning_rate=0.05, train__steps=20, train__log_every=10,
              train__eval_every=10)
  c.train.seeds = 3
  together = train.run(c, str(tmp_path / "three"))
  for i in range(3):
    c1 = _config(optim__name="sgd", optim__learning_rate=0.05, train__steps=20,
                 train__log_every=10, train__eval_every=10)
    c1.train.seed = i
    alone = train.run(c1)
    mine = jax.tree.map(lambda x: x[i], together.params)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(alone.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for row_t, row_a in zip(together.rows, alone.rows):
      for key in ("loss", "accuracy", "eval_loss", "eval_accuracy"):
        assert row_t[f"{key}_seeds"][i] == pytest.approx(row_a[key], rel=1e-5, abs=1e-6)
  last = together.rows[-1]
  assert last["eval_accuracy"] == pytest.approx(np.mean(last["eval_accuracy_seeds"]))
  assert last["eval_accuracy_std"] == pytest.approx(np.std(last["eval_accuracy_seeds"]))
  assert last["eval_accuracy_std"] > 0  # the seeds really differ
