"""Gradient compression: identity cases, error feedback's bookkeeping, unbiasedness and variance,
exact byte counts, simulated network time, resume with residuals, bad input."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import load_experiment, max_diff, set_fields
from pdist import compression, metrics, train
from pdist import config as config_lib
from pdist.compression import base, int8, powersgd, qsgd, randomk, sign, topk


def _config(strategy="sync", steps=12, **fields):
  c = load_experiment("mnist1d", "tiny")
  c.strategy = strategy
  c.optim.name, c.optim.momentum, c.optim.learning_rate = "sgd", 0.9, 0.05
  c.data.batch_size = 32
  c.model.hidden = (32, 32)
  c.sync.devices = 2
  c.ps.workers = 2
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.progress = steps, 4, 0, False
  return set_fields(c, **fields)


def _compression(**fields):
  c = ml_collections.ConfigDict({"compression": compression.compression_config()})
  for k, v in fields.items():
    c.compression[k] = v
  return c


@pytest.mark.parametrize("strategy", ["sync", "ps"])
def test_keeping_everything_is_the_uncompressed_run(strategy):
  plain = train.run(_config(strategy))
  everything = train.run(_config(strategy, compression__name="topk", compression__ratio=1.0))
  assert max_diff(plain.params, everything.params) == 0.0
  assert everything.rows[-1]["residual_norm"] == 0.0
  assert everything.rows[-1]["compression_ratio"] == 1.0
  lossy = train.run(_config(strategy, compression__name="topk", compression__ratio=0.05))
  assert max_diff(plain.params, lossy.params) > 1e-4


def test_powersgd_at_full_rank_sends_the_gradient_itself():
  g = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
  full = powersgd.make(_compression(rank=4))
  c, _ = full.compress(g, full.init(g), None)
  assert np.array_equal(np.asarray(c), np.asarray(g)) and full.wire_bytes((6, 4)) == 96
  low = powersgd.make(_compression(rank=1))
  state = low.init(g)
  c, state = low.compress(g, state, None)
  assert np.linalg.matrix_rank(np.asarray(c), tol=1e-5) == 1 and low.wire_bytes((6, 4)) == 40
  # warm start: repeated power iterations on a fixed matrix converge to its best rank-1 part
  for _ in range(30):
    c, state = low.compress(g, state, None)
  u, s, vt = np.linalg.svd(np.asarray(g))
  np.testing.assert_allclose(np.asarray(c), s[0] * np.outer(u[:, 0], vt[0]), atol=1e-4)


@pytest.mark.parametrize("name, fields", [("topk", {"ratio": 0.1}), ("randomk", {"ratio": 0.1}),
                                          ("sign", {}), ("int8", {}), ("qsgd", {"levels": 4}),
                                          ("powersgd", {"rank": 2})])
def test_error_feedback_loses_nothing(name, fields):
  """applied + new residual == gradient + old residual, over several steps."""
  make = {"topk": topk, "randomk": randomk, "sign": sign, "int8": int8, "qsgd": qsgd,
          "powersgd": powersgd}[name].make
  params = {"w": jnp.zeros((30, 20)), "b": jnp.zeros((20,))}
  t = base.compression_transform(make(_compression(**fields)), True, params)
  state = t.init(params)
  for step in range(4):
    g = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(step), p.shape), params)
    c, new, stats = t.update(g, state, None, jax.random.PRNGKey(100 + step))
    lhs = jax.tree.map(jnp.add, c, new["residual"])
    rhs = jax.tree.map(jnp.add, g, state["residual"])
    assert max_diff(lhs, rhs) < 1e-5
    state = new
  assert float(stats["residual_norm"]) > 0


def test_topk_keeps_exactly_the_largest_magnitudes():
  g = jnp.asarray(np.random.default_rng(0).standard_normal(1000).astype(np.float32))
  c = topk.make(_compression(ratio=0.02)).compress(g, (), None)[0]
  kept = np.flatnonzero(np.asarray(c))
  assert set(kept) == set(np.argsort(-np.abs(np.asarray(g)))[:20])
  assert np.array_equal(np.asarray(c)[kept], np.asarray(g)[kept])


def _draws(fn, v, n=4000):
  return np.asarray(jax.vmap(lambda k: fn(v, k))(jax.random.split(jax.random.PRNGKey(1), n)))


def _z_scores(draws, v, step):
  """(mean of draws - v) in units of the mean's standard error, from the rounding's own variance:
  each coordinate is step * (floor + Bernoulli(f)), variance step^2 f (1 - f)."""
  frac = np.abs(np.asarray(v)) / step
  f = frac - np.floor(frac)
  # + float32 rounding of v / step, up to ~1e-3 of a level near integer ratios
  stderr = step * (np.sqrt(f * (1 - f) / len(draws)) + 2e-3)
  return np.abs(draws.mean(axis=0) - np.asarray(v)) / stderr


def test_qsgd_and_int8_are_unbiased_and_qsgd_meets_its_variance_bound():
  """4000 draws of a 512-vector (one bucket). Unbiased: every coordinate's mean within 5
  standard errors; QSGD's mean squared error within 2% of Lemma 3.1's bound or below it."""
  v = jnp.asarray(np.random.default_rng(3).standard_normal(512).astype(np.float32))
  norm = float(jnp.sqrt(jnp.sum(v * v)))
  for s in (1, 4, 16):
    draws = _draws(lambda x, k: qsgd.quantise(x, k, s), v)
    mse = np.sum((draws - np.asarray(v)) ** 2, axis=1).mean()
    assert mse <= min(512 / s ** 2, math.sqrt(512) / s) * norm ** 2 * 1.02, s
    assert np.all(_z_scores(draws, v, norm / s) < 5), s
  draws = _draws(int8.compress, v)
  scale = float(jnp.max(jnp.abs(v))) / 127
  assert np.all(_z_scores(draws, v, scale) < 5)
  assert np.all(np.abs(draws - np.asarray(v)) <= scale * (1 + 1e-5))  # one level at most


def test_byte_counts_follow_the_encodings():
  shape, n = (40, 25), 1000
  assert int8.wire_bytes(shape) == n + 4
  assert qsgd.make(_compression(levels=16)).wire_bytes(shape) == 4 * 2 + math.ceil(n * 6 / 8)
  assert topk.make(_compression(ratio=0.01)).wire_bytes(shape) == 10 * 8
  assert randomk.make(_compression(ratio=0.01)).wire_bytes(shape) == 10 * 4 + 4
  assert sign.wire_bytes(shape) == 125 + 4
  assert powersgd.make(_compression(rank=3)).wire_bytes(shape) == (40 + 25) * 3 * 4
  assert base.dense_bytes(shape) == 4000


def test_compressed_pushes_arrive_when_their_bytes_say():
  """One async worker, no latency, bandwidth b: update t lands at t (pull + compute + push),
  with pull = dense bytes / b and push = compressed bytes / b."""
  c = _config("ps", steps=10, ps__workers=1, ps__bandwidth=1e5, compression__name="sign")
  r = train.run(c)
  dense = sum(x.size * 4 for x in jax.tree.leaves(r.params))
  pushed = sum(sign.wire_bytes(x.shape) for x in jax.tree.leaves(r.params))
  assert r.summary["bytes_pushed"] == 10 * pushed and r.summary["bytes_up"] == pushed
  assert r.summary["sim_time"] == pytest.approx(10 * (dense / 1e5 + 1.0 + pushed / 1e5), rel=1e-9)
  plain = train.run(_config("ps", steps=10, ps__workers=1, ps__bandwidth=1e5))
  assert plain.summary["sim_time"] == pytest.approx(10 * (2 * dense / 1e5 + 1.0), rel=1e-9)


def test_resume_keeps_the_residuals(tmp_path):
  fields = dict(compression__name="topk", compression__ratio=0.05)
  for strategy in ("sync", "ps"):
    straight = train.run(_config(strategy, steps=16, **fields))
    workdir = str(tmp_path / strategy)
    train.run(_config(strategy, steps=8, checkpoint__every=8, **fields), workdir)
    resumed = train.run(_config(strategy, steps=16, checkpoint__every=8, **fields), workdir)
    assert resumed.summary["resumed_from"] == 8
    assert max_diff(straight.params, resumed.params) == 0.0
    assert max_diff(straight.state["pipeline"], resumed.state["pipeline"]) == 0.0
    assert metrics.without_timing(straight.rows[2:]) == metrics.without_timing(resumed.rows)


@pytest.mark.parametrize("fields, message", [
    ({"compression__name": "topk", "compression__ratio": 0.0},
     "config.compression.ratio must be in (0, 1], got 0.0"),
    ({"compression__name": "randomk", "compression__ratio": 1.5},
     "config.compression.ratio must be in (0, 1], got 1.5"),
    ({"compression__name": "qsgd", "compression__levels": 0},
     "config.compression.levels must be at least 1"),
    ({"compression__name": "powersgd", "compression__rank": 0},
     "config.compression.rank must be at least 1"),
    ({"compression__name": "powersgd", "compression__rank": 64},
     "config.compression.rank=64 compresses no layer"),
    ({"compression__name": "sign", "strategy": "single"},
     "config.strategy='single' sends nothing"),
    ({"compression__ratio": 0.5}, "config.compression.ratio is set but config.compression.name="
                                  "'none'"),
    ({"compression__name": "zip"}, "config.compression.name='zip' is not one of: none, int8"),
    ({"compression__name": "sign", "privacy__mechanism": "dpsgd"},
     "config.compression with config.privacy.mechanism='dpsgd' is not supported"),
])
def test_bad_compression_config_is_one_sentence(fields, message):
  with pytest.raises(config_lib.ConfigError) as e:
    train.run(_config(**fields))
  assert message in str(e.value)
