"""DP-SGD: exact reductions, clipping bounds, the noise's scale, Poisson batches, accounting."""

import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
  # fixed batches carry no guarantee: the budget is named for what it is, never `epsilon`
  assert private.summary["privacy"]["epsilon_if_poisson"] == math.inf
  assert "epsilon" not in private.summary["privacy"] and "epsilon" not in private.rows[-1]
  assert private.summary["privacy"]["guarantee"].startswith("none")


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
  fields = dict(batch=64, steps=4, privacy__noise_multiplier=1.0, privacy__clip_norm=0.5)
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


def _binomial_tail(n, q, cap):
  """P(Binomial(n, q) > cap), summed term by term in log space (no scipy)."""
  log = lambda k: (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)  # noqa: E731
                   + k * math.log(q) + (n - k) * math.log1p(-q))
  return sum(math.exp(log(k)) for k in range(cap + 1, min(n, cap + 2000) + 1))


@pytest.mark.parametrize("kind, q, sigma, steps, published", [
    # Abadi et al. 2016, Sec. 5 / Fig. 2: q = 0.01, sigma = 4, E = 100 epochs, delta = 1e-5 -> 1.26
    ("rdp_classic", 0.01, 4.0, 10_000, 1.26),
    # TF Privacy's DP-SGD tutorial: batch 256 of 60,000, sigma 1.1, 60 epochs, delta 1e-5:
    # 3.01 with the classic conversion, 2.60 with dp-accounting's
    ("rdp_classic", 256 / 60000, 1.1, 60 * 60000 // 256, 3.01),
    # (dp-accounting's own value for the tutorial, as its docs quote it: a regression check)
    ("rdp", 256 / 60000, 1.1, 60 * 60000 // 256, 2.60),
])
def test_epsilon_reproduces_published_tables(kind, q, sigma, steps, published):
  acc = accounting.Accountant(kind, q, sigma, 1e-5, 60000)
  assert acc.epsilon(steps) == pytest.approx(published, abs=0.005)


def test_classic_conversion_against_the_closed_form_of_a_full_batch_gaussian():
  """q = 1: RDP(a) = T a / (2 sigma^2) exactly, and min over real a of RDP(a) + log(1/d)/(a-1)
  is T / (2 sigma^2) + sqrt(2 T log(1/d)) / sigma (at a = 1 + sigma sqrt(2 log(1/d) / T)). The
  accountant minimises over dp-accounting's finite grid of orders, so it can only be above, and
  the grid is fine enough near the optimum (a ~ 5.8) to be within 0.5%."""
  sigma, steps, delta = 8.0, 40, 1e-5
  best = steps / (2 * sigma ** 2) + math.sqrt(2 * steps * math.log(1 / delta)) / sigma
  got = accounting.Accountant("rdp_classic", 1.0, sigma, delta, 1000).epsilon(steps)
  assert best <= got <= best * 1.005
  # the improved conversion is tighter, never looser
  assert accounting.Accountant("rdp", 1.0, sigma, delta, 1000).epsilon(steps) < got


def test_summary_names_the_accountant_and_what_delta_covers():
  c = _config(steps=20, privacy__accountant="rdp", privacy__noise_multiplier=1.3)
  r = train.run(c)
  info = r.summary["privacy"]
  n = r.strategy.task.dataset.num_train
  assert info["epsilon"] == r.summary["epsilon"] == r.rows[-1]["epsilon"]
  assert [row["epsilon"] for row in r.rows] == sorted(row["epsilon"] for row in r.rows)
  assert "Canonne" in info["accountant_description"]
  assert info["neighbouring_relation"] == "add or remove one training example"
  # truncation: P(overflow) from an independent binomial tail, (1 + e^eps) T P added to delta
  p = _binomial_tail(n + 1, c.data.batch_size / n, info["batch_cap"])   # the larger neighbour
  assert info["overflow_probability"] == pytest.approx(p, rel=1e-6)
  want = (1 + math.exp(info["epsilon"])) * 20 * p
  assert info["truncation_delta"] == pytest.approx(want, rel=1e-6)
  assert info["delta_total"] == pytest.approx(1e-5 + want, rel=1e-9)
  assert info["truncation_delta"] <= 1e-6      # the cap keeps it below delta / 10
  assert 20 * p <= 1e-4 * 1e-5
  assert "truncation_delta" in info["delta_covers"]
  # pld models the cap inside epsilon (dp-accounting's TruncatedSubsampledGaussianDpEvent)
  pld_run = privacy.build(set_fields(c, privacy__accountant="pld"), n)
  assert pld_run.accountant.truncation_delta(20) == 0.0
  assert isinstance(pld_run.accountant.event(20).event,
                    dp_accounting.TruncatedSubsampledGaussianDpEvent)


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


@pytest.mark.parametrize("method", ["dense", "vmap"])
def test_bfloat16_models_clip_and_noise_in_float32(method):
  """A bfloat16 model's clipped gradient stays within C (bfloat16 norms let it reach 1.0072 C)
  and its noise is a float32 Gaussian (in bfloat16, noise near 0.5 takes ~20 values)."""
  c = _config(model__dtype="bfloat16")
  task = tasks.build(c, data.load(c.data))
  params = task.init(jax.random.PRNGKey(0))
  x = jnp.asarray(task.dataset.x_train[:16]) * 37.0
  batch = {"x": x, "y": jnp.asarray(task.dataset.y_train[:16])}
  grad = clipping.clipped_grad_fn(task, 0.7, 1.0, batch, method=method)
  assert grad.method == method
  for i in range(16):          # each example alone: its clipped gradient has norm <= C
    mask = np.zeros(16, np.float32)
    mask[i] = 1.0
    got, _ = jax.jit(grad)(params, {**batch, "mask": mask}, None)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(got))
    norm = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2))
                         for g in jax.tree.leaves(got)))
    assert norm <= 0.7 * (1 + 1e-6), (i, norm)
  bf16 = {"w": jnp.full((20_000,), 0.5, jnp.bfloat16)}
  out, _, _ = noise.gaussian_noise(0.01).update(bf16, (), None, jax.random.PRNGKey(1))
  assert out["w"].dtype == jnp.float32
  assert len(np.unique(np.asarray(out["w"]))) > 19_000


def test_unprotected_statistics_are_not_logged_by_default(tmp_path):
  """metrics.jsonl, summary.json and the progress bar carry no statistic of the private batches
  (training loss and accuracy, batch_fill, clipped_fraction) unless the config releases them."""
  run = train.run(_config(steps=8), str(tmp_path / "private"))
  logged = metrics.read(str(tmp_path / "private"))
  private = {"loss", "accuracy", "batch_fill", "clipped_fraction"}
  assert logged and all(not private & set(row) for row in logged)
  assert all("epsilon" in row for row in logged)
  assert not private & set(metrics.read_json(str(tmp_path / "private" / "summary.json")))
  assert private <= set(run.rows[-1])           # the caller's own rows keep them
  train.run(_config(steps=8, privacy__release_train_stats=True), str(tmp_path / "released"))
  logged = metrics.read(str(tmp_path / "released"))
  assert all(private <= set(row) for row in logged)
