"""The gradient pipeline: where its state lives in each strategy, and that it is checkpointed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_experiment, max_diff, set_fields
from pdist import metrics, pipeline, train


def _running_sum() -> pipeline.GradientTransformation:
  """Local: keeps the sum of the gradients it has seen (and reports their squared norm)."""
  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update(grads, state, params, rng):
    assert params is None  # the local chain never sees parameters
    norm2 = sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads))
    return grads, jax.tree.map(jnp.add, state, grads), {"local_norm2": norm2}

  return pipeline.GradientTransformation(init, update)


def _halve() -> pipeline.GradientTransformation:
  """Central: halves the gradient and counts the updates it has seen."""
  def update(grads, count, params, rng):
    assert params is not None
    return jax.tree.map(lambda g: g / 2, grads), count + 1, {}

  return pipeline.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update)


PIPE = pipeline.Pipeline(_running_sum(), _halve())


def _config(strategy="single", steps=12, batch=32, lr=0.05, **fields):
  c = load_experiment("mnist1d", "tiny")
  c.strategy = strategy
  c.optim.name, c.optim.momentum, c.optim.learning_rate = "sgd", 0.0, lr
  c.data.batch_size = batch
  c.model.hidden = (16,)
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.progress = steps, 4, 0, False
  return set_fields(c, **fields)



def test_central_halving_equals_half_the_learning_rate():
  halved = train.run(_config(lr=0.1), pipeline=PIPE)
  plain = train.run(_config(lr=0.05))
  assert max_diff(halved.params, plain.params) < 1e-6
  assert int(halved.state["pipeline"]["central"]) == 12
  assert all("local_norm2" in row and row["local_norm2"] > 0 for row in halved.rows)


def test_sync_local_state_is_per_device_and_averages_to_single():
  single = train.run(_config(), pipeline=PIPE)
  sync = train.run(_config("sync", sync__devices=4), pipeline=PIPE)
  per_device = jax.device_get(sync.state["pipeline"]["local"])
  leaf = jax.tree.leaves(per_device)[0]
  assert leaf.shape[0] == 4
  assert np.abs(leaf[0] - leaf[1]).max() > 1e-4  # each device summed its own gradients
  mean = jax.tree.map(lambda x: x.mean(axis=0), per_device)
  assert max_diff(mean, single.state["pipeline"]["local"]) < 1e-5
  assert max_diff(single.params, sync.params) < 1e-5
  # the devices' gradients were smaller-batch gradients: larger norms than the global one
  assert sync.rows[0]["local_norm2"] > single.rows[0]["local_norm2"]


def test_ps_local_state_is_per_worker_and_sums_to_the_applied_gradients():
  async_run = train.run(_config("ps", ps__workers=3, ps__consistency="async"), pipeline=PIPE)
  local = jax.device_get(async_run.state["pipeline"]["local"])
  per_worker = [jax.tree.map(lambda x: x[w], local) for w in range(3)]
  assert all(max_diff(p, jax.tree.map(np.zeros_like, p)) > 1e-4 for p in per_worker)
  # plain SGD at lr/2 (the central halving): params moved by -lr/2 * (sum of applied gradients)
  init = async_run.strategy.task.init(jax.random.PRNGKey(0))
  total = jax.tree.map(lambda x: x.sum(axis=0), local)
  expected = jax.tree.map(lambda p, g: p - 0.025 * g, init, total)
  assert max_diff(expected, async_run.params) < 1e-5
  assert int(async_run.state["pipeline"]["central"]) == 12

  bsp = train.run(_config("ps", ps__workers=4, ps__consistency="bsp", ps__backup_workers=1,
                          ps__stragglers__fraction=0.25, ps__stragglers__factor=3.0,
                          data__partition="shared"), pipeline=PIPE)
  local = jax.device_get(bsp.state["pipeline"]["local"])
  slow = bsp.strategy.simulator.timing.stragglers
  assert slow and all(not np.any(leaf[slow[0]]) for leaf in jax.tree.leaves(local))


def test_pipeline_state_is_checkpointed_and_resumed_exactly(tmp_path):
  for strategy, fields in (("sync", {"sync__devices": 2}),
                           ("ps", {"ps__workers": 2, "ps__consistency": "async"})):
    straight = train.run(_config(strategy, steps=16, **fields), pipeline=PIPE)
    workdir = str(tmp_path / strategy)
    first = _config(strategy, steps=8, **fields)
    first.checkpoint.every = 8
    train.run(first, workdir, pipeline=PIPE)
    rest = _config(strategy, steps=16, **fields)
    rest.checkpoint.every = 8
    resumed = train.run(rest, workdir, pipeline=PIPE)
    assert resumed.summary["resumed_from"] == 8
    assert max_diff(straight.params, resumed.params) == 0.0
    assert max_diff(straight.state["pipeline"], resumed.state["pipeline"]) == 0.0
    assert metrics.without_timing(straight.rows[2:]) == metrics.without_timing(resumed.rows)


def test_chain_runs_in_order_and_merges_stats():
  double = pipeline.GradientTransformation(
      lambda p: (), lambda g, s, p, rng: (jax.tree.map(lambda x: 2 * x, g), s, {"a": 1.0}))
  plus_one = pipeline.GradientTransformation(
      lambda p: (), lambda g, s, p, rng: (jax.tree.map(lambda x: x + 1, g), s, {"b": 2.0}))
  grads = {"w": jnp.array([1.0, 2.0])}
  out, state, stats = pipeline.chain(double, plus_one).update(grads, ((), ()), None,
                                                              jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out["w"], [3.0, 5.0])
  assert stats == {"a": 1.0, "b": 2.0} and state == ((), ())


@pytest.mark.parametrize("strategy", ["single", "sync", "ps"])
def test_empty_pipeline_state_has_no_arrays(strategy):
  own = {"sync": {"sync__devices": 2}, "ps": {"ps__workers": 2}}.get(strategy, {})
  r = train.run(_config(strategy, steps=4, **own))
  assert jax.tree.leaves(r.state["pipeline"]) == []
