"""Gradient compression: identity cases, error feedback's bookkeeping, global and per-leaf top-k
against a numpy reference, unbiasedness and variance against QSGD's closed form, byte counts and
kept fractions against hand-computed numbers, simulated network time, resume with residuals, bad
input."""

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
  if strategy == "sync":
    c.sync.devices = 2
  if strategy == "ps":
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
  assert everything.rows[-1]["kept_fraction"] == 1.0
  lossy = train.run(_config(strategy, compression__name="topk", compression__ratio=0.05))
  assert max_diff(plain.params, lossy.params) > 1e-4
  # MLP 40-32-32-10: 2698 values, 10792 dense bytes; global top-k 5%: k = round(134.9) = 135
  # values of 4 bytes and 135 int32 indices = 1080 bytes
  row = lossy.rows[-1]
  assert row["bytes_up"] == 1080
  assert row["kept_fraction"] == pytest.approx(135 / 2698, rel=1e-6)
  assert row["compression_ratio"] == pytest.approx(10792 / 1080, rel=1e-6)


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
                                          ("topk", {"ratio": 0.1, "scope": "leaf"}),
                                          ("randomk", {"ratio": 0.1, "scope": "leaf"}),
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


def _numpy_global_topk(leaves, k):
  """The reference: flatten every leaf into one vector, keep the k largest |values| (argsort,
  ties to the lower position), scatter them back into the leaves' shapes."""
  flat = np.concatenate([x.ravel() for x in leaves])
  keep = np.argsort(-np.abs(flat), kind="stable")[:k]
  sent = np.zeros_like(flat)
  sent[keep] = flat[keep]
  parts = np.split(sent, np.cumsum([x.size for x in leaves])[:-1])
  return [part.reshape(x.shape) for part, x in zip(parts, leaves)]


def test_global_topk_and_its_residual_equal_a_numpy_reference():
  """Error feedback over 4 steps on a 641-value tree, ratio 0.05: k = round(32.05) = 32 of the
  whole gradient. The sent values and the residual equal numpy's exactly."""
  shapes = {"w": (30, 20), "b": (20,), "c": (7, 3)}
  params = {name: jnp.zeros(shape) for name, shape in shapes.items()}
  t = base.compression_transform(topk.make(_compression(ratio=0.05)), True, params)
  state = t.init(params)
  rng = np.random.default_rng(5)
  residual = [np.zeros(shapes[name], np.float32) for name in sorted(shapes)]
  for step in range(4):
    # "b" is 5x larger: whole-gradient top-k takes most of it (per-leaf top-k would take one)
    g = {name: (rng.standard_normal(shape) * (5 if name == "b" else 1)).astype(np.float32)
         for name, shape in shapes.items()}
    p = [g[name] + e for name, e in zip(sorted(shapes), residual)]
    want = _numpy_global_topk(p, 32)
    residual = [x - w for x, w in zip(p, want)]
    sent, state, stats = t.update(jax.tree.map(jnp.asarray, g), state, None,
                                  jax.random.PRNGKey(step))
    for name, w, e in zip(sorted(shapes), want, residual):
      assert np.array_equal(np.asarray(sent[name]), w), (step, name)
      assert np.array_equal(np.asarray(state["residual"][name]), e), (step, name)
    assert sum(np.count_nonzero(w) for w in want) == 32
    assert np.count_nonzero(want[0]) > 5, "b's share shows the choice was global"
  assert float(stats["bytes_up"]) == 256                     # 32 x (4-byte value + int32 index)
  assert float(stats["kept_fraction"]) == pytest.approx(32 / 641, rel=1e-6)
  assert float(stats["compression_ratio"]) == pytest.approx(2564 / 256, rel=1e-6)


@pytest.mark.parametrize("ratio, a, b", [
    (0.3, [2, -2], [0, 0, 0, 5, 0, 0, 0, 0]),    # k = 3: the 5, then a's 2s before b's
    (0.4, [2, -2], [2, 0, 0, 5, 0, 0, 0, 0]),    # k = 4: and b's first 2
])
def test_global_topk_breaks_ties_toward_the_lower_position(ratio, a, b):
  """Equal magnitudes across and within leaves of the concatenation [2, -2 | 2, 2, -2, 5, 2, 2,
  2, 2] (the first leaf smaller than k); per-leaf top-k would keep one value of the first leaf."""
  g = {"a": jnp.asarray([2.0, -2.0]), "b": jnp.asarray([2.0, 2.0, -2.0, 5.0, 2.0, 2.0, 2.0, 2.0])}
  t = base.compression_transform(topk.make(_compression(ratio=ratio)), False, g)
  sent, _, _ = t.update(g, t.init(g), None, jax.random.PRNGKey(0))
  want = _numpy_global_topk([np.asarray(g["a"]), np.asarray(g["b"])], round(ratio * 10))
  assert np.array_equal(want[0], a) and np.array_equal(want[1], b)
  assert np.array_equal(np.asarray(sent["a"]), a)
  assert np.array_equal(np.asarray(sent["b"]), b)


@pytest.mark.parametrize("name, scope, ratio, values, wire", [
    # leaves of 600 and 50 values, 2600 dense bytes
    ("topk", "global", 0.001, 1, 8),       # k = round(0.65) = 1 of 650: one value + one index
    ("topk", "leaf", 0.001, 2, 16),        # round(0.6) = 1 and max(1, round(0.05)) = 1
    ("topk", "global", 0.01, 6, 48),       # round(6.5) = 6 (a tie goes to the even integer)
    ("topk", "leaf", 0.01, 7, 56),         # 6 + max(1, round(0.5) = 0)
    ("topk", "global", 1.0, 650, 2600),    # k = n: sent dense, no indices
    ("randomk", "global", 0.001, 1, 8),    # one value + one 4-byte seed
    ("randomk", "leaf", 0.001, 2, 16),     # a value and a seed per leaf
    ("randomk", "global", 0.1, 65, 264),   # 65 values + a seed
])
def test_scope_decides_what_is_sent(name, scope, ratio, values, wire):
  params = {"a": jnp.zeros((20, 30)), "b": jnp.zeros((50,))}
  g = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(1), p.shape) + 3.0, params)
  make = {"topk": topk, "randomk": randomk}[name].make
  compressor = make(_compression(ratio=ratio, scope=scope))
  t = base.compression_transform(compressor, True, params)
  sent, _, stats = t.update(g, t.init(params), None, jax.random.PRNGKey(2))
  assert sum(np.count_nonzero(np.asarray(x)) for x in jax.tree.leaves(sent)) == values
  assert float(stats["bytes_up"]) == wire
  assert float(stats["kept_fraction"]) == pytest.approx(values / 650, rel=1e-6)
  assert float(stats["compression_ratio"]) == pytest.approx(2600 / wire, rel=1e-6)
  assert sum(base.tree_wire_bytes(compressor, params)) == wire    # what a ps push costs


def test_global_randomk_draws_uniformly_from_the_whole_gradient():
  """A 600-value leaf and five 8-value leaves, ratio 0.05: k = 32 of 640 every draw, each
  coordinate kept with probability 0.05, so the small leaves get 2 a draw together (per-leaf
  random-k would send one from each, 5)."""
  params = {"big": jnp.zeros((600,)), **{f"s{i}": jnp.zeros((8,)) for i in range(5)}}
  g = jax.tree.map(lambda p: jnp.ones(p.shape), params)
  t = base.compression_transform(randomk.make(_compression(ratio=0.05)), False, params)
  state = t.init(params)
  draws = jax.jit(jax.vmap(lambda key: t.update(g, state, None, key)[0]))(
      jax.random.split(jax.random.PRNGKey(0), 1000))
  kept = np.concatenate([np.asarray(draws[k]).reshape(1000, -1) != 0 for k in sorted(params)], 1)
  assert np.all(kept.sum(axis=1) == 32)
  per_coordinate = kept.sum(axis=0)             # Binomial(1000, 0.05): mean 50, sd 6.9
  assert np.all(np.abs(per_coordinate - 50) < 6 * 6.9)
  small = per_coordinate[600:].sum()            # mean 2000, sd about 42
  assert abs(small - 2000) < 5 * 42


def _draws(fn, v, n=4000):
  return np.asarray(jax.vmap(lambda k: fn(v, k))(jax.random.split(jax.random.PRNGKey(1), n)))


def _rounding_variance(v, step):
  """The exact variance of stochastic rounding of v to multiples of `step`: coordinate i is
  step * (floor(x_i) + Bernoulli(p_i)), x_i = |v_i| / step, p_i = x_i - floor(x_i), so its
  variance is step^2 p_i (1 - p_i)."""
  x = np.abs(np.asarray(v, np.float64)) / step
  p = x - np.floor(x)
  return float(np.sum(step ** 2 * p * (1 - p)))


@pytest.mark.parametrize("name, s", [("qsgd", 1), ("qsgd", 4), ("qsgd", 16), ("int8", None)])
def test_stochastic_rounding_is_unbiased_with_its_closed_form_variance(name, s):
  """4000 draws of a fixed 1000-vector: QSGD's two buckets (512 values, then 488), each rounded
  to multiples of ||bucket|| / s; int8 to multiples of max|v| / 127. The Monte Carlo mean squared
  error matches the closed form within 3% (its standard error is under 0.5%; a 1.5x error fails);
  n ||mean error||^2, whose expectation is the same variance, is within 30% of it (its spread is
  ~6%), so the mean is unbiased to a fraction of the noise of 4000 draws; QSGD meets Lemma 3.1,
  E||c - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2 for each bucket of d values."""
  v = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
  if name == "qsgd":
    buckets = [v[:512], v[512:]]
    steps = [float(np.linalg.norm(b.astype(np.float64))) / s for b in buckets]
    exact = sum(_rounding_variance(b, h) for b, h in zip(buckets, steps))
    draws = _draws(lambda x, k: qsgd.quantise(x, k, s), jnp.asarray(v))
  else:
    scale = float(np.max(np.abs(v)) / np.float32(127))
    buckets, exact = [v], _rounding_variance(v, scale)
    draws = _draws(int8.compress, jnp.asarray(v))
    assert np.all(np.abs(draws - v) <= scale * (1 + 1e-5))      # one level at most
  err = draws.astype(np.float64) - v
  mse = np.mean(np.sum(err ** 2, axis=1))
  assert mse == pytest.approx(exact, rel=0.03)
  assert 0.7 < len(draws) * np.sum(err.mean(axis=0) ** 2) / exact < 1.3
  if name == "qsgd":
    for b, h, part in zip(buckets, steps, (slice(0, 512), slice(512, 1000))):
      d, norm2 = b.size, float(np.sum(b.astype(np.float64) ** 2))
      bound = min(d / s ** 2, math.sqrt(d) / s) * norm2
      assert _rounding_variance(b, h) <= bound
      assert np.mean(np.sum(err[:, part] ** 2, axis=1)) <= bound


def test_byte_counts_follow_the_encodings():
  """A 40 x 25 leaf (1000 values, 4000 dense bytes), each payload counted by hand."""
  shape = (40, 25)
  assert base.dense_bytes(shape) == 4000
  assert int8.wire_bytes(shape) == 1004              # 1000 one-byte levels + a float32 scale
  # s = 16: a sign bit + 5 bits for 17 levels = 6 bits x 1000 = 750 bytes, + 2 float32 norms
  assert qsgd.make(_compression(levels=16)).wire_bytes(shape) == 758
  assert qsgd.make(_compression(levels=1)).wire_bytes(shape) == 258    # 2 bits a value
  assert topk.make(_compression(ratio=0.01)).wire_bytes(shape) == 80   # 10 values + 10 int32
  assert randomk.make(_compression(ratio=0.01)).wire_bytes(shape) == 44    # 10 values + a seed
  assert sign.wire_bytes(shape) == 129               # 125 bytes of signs + a float32 scale
  assert powersgd.make(_compression(rank=3)).wire_bytes(shape) == 780  # (40 + 25) x 3 float32


def test_compressed_pushes_arrive_when_their_bytes_say():
  """One async worker, no latency, bandwidth b: update t lands at t (pull + compute + push),
  with pull = dense bytes / b and push = compressed bytes / b."""
  c = _config("ps", steps=10, ps__workers=1, network__bandwidth=1e5, compression__name="sign")
  r = train.run(c)
  # MLP 40-32-32-10: leaves of 32, 1280, 32, 1024, 10, 320 values = 2698 (10792 dense bytes);
  # sign sends ceil(n / 8) bytes + a float32 scale a leaf: 8 + 164 + 8 + 132 + 6 + 44 = 362
  assert sorted(x.size for x in jax.tree.leaves(r.params)) == [10, 32, 32, 320, 1024, 1280]
  dense, pushed = 10792, 362
  assert r.summary["bytes_pushed"] == 10 * pushed and r.summary["bytes_up"] == pushed
  assert r.summary["sim_time"] == pytest.approx(10 * (dense / 1e5 + 1.0 + pushed / 1e5), rel=1e-9)
  plain = train.run(_config("ps", steps=10, ps__workers=1, network__bandwidth=1e5))
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
    ({"compression__name": "topk", "compression__scope": "layer"},
     "config.compression.scope='layer' is not one of: global, leaf"),
    ({"compression__name": "int8", "compression__scope": "leaf"},
     "config.compression.scope='leaf' does not apply to config.compression.name='int8' (it reads "
     "error_feedback); leave it at 'global'"),
    ({"compression__name": "sign", "compression__ratio": 0.1},
     "config.compression.ratio=0.1 does not apply to config.compression.name='sign'"),
    ({"compression__name": "qsgd", "compression__rank": 2},
     "config.compression.rank=2 does not apply to config.compression.name='qsgd' (it reads "
     "error_feedback, levels)"),
    ({"compression__name": "topk", "strategy": "ps", "ps__shards": 2},
     "config.compression.scope='global' with config.ps.shards=2 is not supported"),
])
def test_bad_compression_config_is_one_sentence(fields, message):
  with pytest.raises(config_lib.ConfigError) as e:
    train.run(_config(**fields))
  assert message in str(e.value)
