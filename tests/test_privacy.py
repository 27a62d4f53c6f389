"""DP-SGD: exact reductions, clipping bounds, the noise's scale, Poisson batches, accounting."""

import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import pld, rdp

from conftest import load_experiment, max_diff, set_fields
from pdist import config as config_lib
from pdist import data, metrics, privacy, tasks, train
from pdist.privacy import accounting, clipping, noise, sampling


def _config(strategy="single", steps=12, batch=32, **fields):
  c = load_experiment("mnist1d", "tiny")
  c.strategy = strategy
  c.optim.name, c.optim.momentum, c.optim.learning_rate = "sgd", 0.9, 0.1
  c.data.batch_size = batch
  c.model.hidden = (32, 32)
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.progress = steps, 4, 0, False
  c.privacy.mechanism = "dpsgd"
  return set_fields(c, **fields)


def test_no_noise_and_no_clipping_on_fixed_batches_is_plain_training():
  private = train.run(_config(privacy__clip_norm=math.inf, privacy__noise_multiplier=0.0,
                              privacy__sampling="shuffle"))
  plain = train.run(_config(privacy__mechanism="none"))
  assert max_diff(plain.params, private.params) < 1e-6
  assert private.rows[-1]["clipped_fraction"] == 0.0
  for a, b in zip(plain.rows, private.rows):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert b["accuracy"] == pytest.approx(a["accuracy"], rel=1e-6)
  assert private.summary["privacy"]["epsilon"] == math.inf


def _task_and_batch(model="mlp", n=24):
  c = _config(model__name=model)
  c.model.hidden = (8, 8) if model == "cnn1d" else (32, 32)
  task = tasks.build(c, data.load(c.data))
  params = task.init(jax.random.PRNGKey(0))
  batch = {"x": jnp.asarray(task.dataset.x_train[:n]), "y": jnp.asarray(task.dataset.y_train[:n])}
  return task, params, batch


def _per_example_grads(task, params, batch):
  def one(x, y):
    return jax.grad(lambda p: task.loss(p, {"x": x[None], "y": y[None]}, None)[0])(params)
  return jax.vmap(one)(batch["x"], batch["y"])


@pytest.mark.parametrize("model, method", [("mlp", "dense"), ("mlp", "vmap"), ("cnn1d", "vmap")])
def test_clipped_sum_bounds_each_example_and_keeps_small_ones(model, method):
  task, params, batch = _task_and_batch(model)
  per = _per_example_grads(task, params, batch)
  norms = np.sqrt(sum(np.sum(np.asarray(g).reshape(len(batch["x"]), -1) ** 2, axis=1)
                      for g in jax.tree.leaves(per)))
  clip = float(np.median(norms))  # half the examples are clipped, half are not
  mask = np.ones(len(norms), np.float32)
  mask[[3, 7]] = 0.0  # padding slots contribute nothing
  grad = clipping.clipped_grad_fn(task, clip, 10.0, batch, method=method)
  assert grad.method == method
  got, (_, m) = jax.jit(grad)(params, {**batch, "mask": mask}, None)
  scales = np.minimum(1.0, clip / norms) * mask
  want = jax.tree.map(lambda g: np.tensordot(scales, np.asarray(g), axes=1) / 10.0, per)
  assert max_diff(got, want) < 1e-5
  assert float(m["clipped"]) * 10 == np.sum((norms > clip) * mask)
  # sensitivity: removing one example moves the (un-normalised) sum by at most C
  without = mask.copy()
  without[0] = 0.0
  got2, _ = jax.jit(grad)(params, {**batch, "mask": without}, None)
  moved = math.sqrt(sum(float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))
                        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(got2)))) * 10
  assert moved <= clip * (1 + 1e-5)
  assert moved == pytest.approx(min(norms[0], clip), rel=1e-4)


def test_dense_method_is_chosen_only_for_dense_models():
  task, params, batch = _task_and_batch("mlp")
  assert clipping.dense_layers(task, params, batch) is not None
  task, params, batch = _task_and_batch("cnn1d")
  assert clipping.dense_layers(task, params, batch) is None
  assert clipping.clipped_grad_fn(task, 1.0, 1.0, batch).method == "vmap"


def test_noise_has_the_calibrated_standard_deviation():
  """500k draws: the sample std's relative standard error is 1/sqrt(2N) = 0.1%; we allow 1%."""
  t = noise.gaussian_noise(0.37)
  zeros = {"a": jnp.zeros((500, 600)), "b": jnp.zeros((200_000,))}
  out, _, _ = t.update(zeros, (), None, jax.random.PRNGKey(4))
  draws = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(out)])
  assert abs(draws.std() / 0.37 - 1) < 0.01 and abs(draws.mean()) < 0.37 * 0.01
  assert np.corrcoef(np.asarray(out["a"]).ravel()[:200_000], np.asarray(out["b"]))[0, 1] < 0.01


@pytest.mark.slow
def test_noise_is_drawn_once_per_global_batch_whatever_the_device_count():
  fields = dict(batch=64, privacy__noise_multiplier=1.0, privacy__clip_norm=0.5)
  ref = train.run(_config(**fields))
  alone = train.run(_config(**{**fields, "privacy__noise_multiplier": 0.0}))
  assert max_diff(ref.params, alone.params) > 1e-3  # the noise really moves the parameters
  for devices in (2, 8):
    got = train.run(_config("sync", sync__devices=devices, **fields))
    assert max_diff(ref.params, got.params) < 1e-5, devices
    assert got.rows[-1]["loss"] == pytest.approx(ref.rows[-1]["loss"], rel=1e-5)
  micro = train.run(_config(optim__accumulate_steps=4, **fields))
  assert max_diff(ref.params, micro.params) < 1e-5  # clipping stays per example


def test_poisson_batches_have_the_right_rate_and_are_pure():
  n, q, steps = 500, 0.1, 2000
  cap = sampling.batch_cap(n, q)
  idx, mask = sampling.poisson_batches(7, 0, steps, n, q, cap)
  sizes = mask.sum(axis=1)
  # mean batch size: q n = 50, standard error sqrt(n q (1 - q) / steps) = 0.15; allow 5 of them
  assert abs(sizes.mean() - q * n) < 5 * math.sqrt(n * q * (1 - q) / steps)
  counts = np.bincount(idx[mask > 0], minlength=n)
  # each example's inclusions ~ Binomial(steps, q): mean 200, sd 13.4; allow 6 sd for all 500
  assert np.all(np.abs(counts - steps * q) < 6 * math.sqrt(steps * q * (1 - q)))
  again, again_mask = sampling.poisson_batches(7, 1500, 10, n, q, cap)
  assert np.array_equal(again, idx[1500:1510]) and np.array_equal(again_mask, mask[1500:1510])
  for row, m in zip(idx, mask):  # no example twice in a batch
    real = row[m > 0]
    assert len(np.unique(real)) == len(real)
  assert sampling.overflow_probability(n, q, cap) <= 1e-9


def test_reported_epsilon_is_dp_accountings():
  c = _config(steps=20, privacy__accountant="rdp", privacy__noise_multiplier=1.3)
  r = train.run(c)
  n = r.strategy.task.dataset.num_train
  q = c.data.batch_size / n
  event = dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.3)), 20)
  want = rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
  assert r.summary["epsilon"] == pytest.approx(want, rel=1e-9)
  assert [row["epsilon"] for row in r.rows] == sorted(row["epsilon"] for row in r.rows)
  info = r.summary["privacy"]
  assert info["truncation_delta"] == pytest.approx(20 * info["overflow_probability"])
  # the TF Privacy tutorial's setting: q = 256/60000, sigma = 1.1, 60 epochs, delta = 1e-5
  tutorial = accounting.Accountant("rdp", 256 / 60000, 1.1, 1e-5, 60000)
  event = dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(256 / 60000, dp_accounting.GaussianDpEvent(1.1)), 14063)
  assert tutorial.epsilon(14063) == rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
  assert tutorial.epsilon(14063) == pytest.approx(2.597, abs=1e-3)
  truncated = accounting.Accountant("pld", 0.064, 1.1, 1e-5, 4000, cap=300)
  event = dp_accounting.SelfComposedDpEvent(dp_accounting.TruncatedSubsampledGaussianDpEvent(
      4000, 0.064, 300, 1.1), 50)
  assert truncated.epsilon(50) == pld.PLDAccountant().compose(event).get_epsilon(1e-5)


def test_target_epsilon_calibrates_the_noise():
  c = _config(steps=40, privacy__target_epsilon=4.0)
  mechanism = privacy.build(c, 400)
  sigma = mechanism.noise_multiplier
  assert mechanism.accountant.epsilon(40) <= 4.0 + 1e-3
  looser = accounting.Accountant("rdp", mechanism.q, sigma * 0.98, 1e-5, 400, mechanism.cap)
  assert looser.epsilon(40) > 4.0  # and it is the smallest such noise, to 2%


def test_resume_after_a_checkpoint_is_exact(tmp_path):
  straight = train.run(_config(steps=16))
  first = _config(steps=8, checkpoint__every=8)
  train.run(first, str(tmp_path))
  resumed = train.run(_config(steps=16, checkpoint__every=8), str(tmp_path))
  assert resumed.summary["resumed_from"] == 8
  assert max_diff(straight.params, resumed.params) == 0.0
  assert metrics.without_timing(straight.rows[2:]) == metrics.without_timing(resumed.rows)


@pytest.mark.parametrize("fields, message", [
    ({"privacy__clip_norm": 0.0}, "config.privacy.clip_norm must be positive"),
    ({"privacy__noise_multiplier": -1.0}, "config.privacy.noise_multiplier must be finite and "
                                          "non-negative"),
    ({"privacy__delta": 1.5}, "config.privacy.delta must be in (0, 1)"),
    ({"privacy__sampling": "uniform"}, "config.privacy.sampling='uniform' is not one of"),
    ({"privacy__accountant": "moments"}, "config.privacy.accountant='moments' is not one of"),
    ({"strategy": "ps"}, "config.privacy.mechanism='dpsgd' runs with config.strategy='single' or "
                         "'sync', not 'ps'"),
    ({"privacy__mechanism": "none", "privacy__clip_norm": 2.0},
     "config.privacy.clip_norm is set but config.privacy.mechanism='none'"),
    ({"privacy__target_epsilon": 1e-4}, "config.privacy.target_epsilon=0.0001 cannot be reached"),
    ({"privacy__mechanism": "laplace"}, "config.privacy.mechanism='laplace' is not one of: none, "
                                        "dpsgd"),
])
def test_bad_privacy_config_is_one_sentence(fields, message):
  c = _config(**fields)
  with pytest.raises(config_lib.ConfigError) as e:
    train.run(c)
  assert message in str(e.value) and "\n" not in str(e.value)
