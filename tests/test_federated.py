"""Federated learning: FedAvg against centralised SGD, sampling, resume, secure aggregation,
DP-FedAvg, bad input."""

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import assert_one_clear_line, max_diff, quiet_experiment
from pdist import data, strategies, tasks, train
from pdist.federated import rounds
from pdist.federated.secagg import SecAggError


def _config(preset="tiny", **fields):
  return quiet_experiment("fedavg", preset, **fields)


def _strategy(c):
  return strategies.build(c, tasks.build(c, data.load(c.data)))


def test_fedavg_one_full_local_step_equals_centralised_sgd():
  """All clients, equal sizes, one full-batch local step each, server SGD lr 1: the average of
  the clients' changes is one SGD step on the union of their data."""
  kw = dict(data__num_train=40, federated__clients=4, federated__clients_per_round=4,
            federated__local_epochs=1, data__batch_size=10, federated__client_lr=0.3)
  fed = _config(**kw, train__steps=3)
  central = _config(**kw, train__steps=3)
  central.strategy, central.data.batch_size, central.optim.learning_rate = "single", 40, 0.3
  f, s = _strategy(fed), _strategy(central)
  fs, ss = f.init(jax.random.PRNGKey(0)), s.init(jax.random.PRNGKey(0))
  fs, _ = f.run(fs, 3)
  ss, _ = s.run(ss, 3)
  assert max_diff(f.params(fs), s.params(ss)) < 1e-6
  assert max_diff(f.params(fs), f.init(jax.random.PRNGKey(0))["params"]) > 1e-3  # it moved


def test_sampling_is_deterministic_and_uniform():
  c = _config(federated__clients=20, federated__clients_per_round=5)
  sizes = np.full(20, 10)
  planner = rounds.RoundPlanner(c.federated, c.network, sizes, 10, seed=3, bytes_down=1, bytes_up=1)
  a, b = planner.plan(0, 2000), planner.plan(0, 2000)
  assert np.array_equal(a.clients, b.clients)
  assert np.array_equal(planner.plan(1500, 10).clients, a.clients[1500:1510])  # pure in round
  assert all(len(set(row)) == 5 for row in a.clients)                     # without replacement
  counts = np.bincount(a.clients.ravel(), minlength=20)
  assert stats.chisquare(counts).pvalue > 1e-3                            # uniform over clients


def test_dropouts_and_deadline_are_counted():
  c = _config("tiny,dropouts", train__steps=20)
  result = train.run(c, None)
  last = result.rows[-1]
  assert last["clients_sampled"] == 20 * 5
  assert 0 < last["clients_dropped"] < last["clients_sampled"]
  assert last["sim_time"] <= 20 * c.federated.deadline
  assert last["bytes_uploaded"] < last["bytes_downloaded"]   # dropped clients upload nothing


@pytest.mark.parametrize("preset", ["tiny,dp"])
def test_resume_is_bit_identical(preset, tmp_path):
  """Including DP's noise and Poisson client sampling (SCAFFOLD's per-client state, dropouts and
  stragglers: test_checkpoint.py kills such a run and resumes it bit for bit)."""
  ref = train.run(_config(preset, train__steps=8, checkpoint__every=4), str(tmp_path / "ref"))
  work = str(tmp_path / "run")
  train.run(_config(preset, train__steps=4, checkpoint__every=4), work)
  resumed = train.run(_config(preset, train__steps=8, checkpoint__every=4), work)
  assert resumed.summary["resumed_from"] == 4
  for a, b in zip(jax.tree.leaves(ref.state), jax.tree.leaves(resumed.state)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert ref.rows[-1]["sim_time"] == resumed.rows[-1]["sim_time"]


def test_scaffold_control_variates_change_only_for_clients_that_trained():
  c = _config("tiny,scaffold", federated__dropouts__rate=0.4)
  f = _strategy(c)
  state = f.init(jax.random.PRNGKey(0))
  plan = f.planner.plan(0, 1)
  state, _ = f.run(state, 1)
  changed = np.flatnonzero(np.abs(np.asarray(state["client_control"])).sum(axis=1) > 0)
  assert set(changed) == set(plan.clients[0][plan.survived[0]])
  # the update rule itself: tests/test_federated_algorithms.py, against the paper written by hand


# -- secure aggregation ---------------------------------------------------------------------------
def test_secure_aggregation_run_matches_plain_run_to_quantisation():
  plain = train.run(_config(train__steps=6), None)
  secure = train.run(_config("tiny,secagg", train__steps=6), None)
  assert max_diff(plain.params, secure.params) < 1e-3
  assert secure.rows[-1]["secagg_failed_rounds"] == 0


def test_secure_aggregation_beyond_threshold_skips_or_stops():
  c = _config("tiny,secagg", federated__dropouts__rate=0.6, train__steps=8)
  skipped = train.run(c, None)
  assert 0 < skipped.rows[-1]["secagg_failed_rounds"] == skipped.rows[-1]["rounds_failed"] < 8
  c = _config("tiny,secagg", federated__dropouts__rate=0.9, train__steps=4,
              federated__secagg__on_failure="stop")
  with pytest.raises(SecAggError, match="round 0: secure aggregation: .* fewer than the threshold"):
    train.run(c, None)


# -- DP-FedAvg ------------------------------------------------------------------------------------
def test_dp_fedavg_clips_each_client_update():
  c = _config("tiny,dp", privacy__noise_multiplier=0.0, privacy__clip_norm=0.01)
  f = _strategy(c)
  state = f.init(jax.random.PRNGKey(0))
  plan = f.planner.plan(0, 1)
  uploads, _, _ = f._clients(state, plan.clients[0], plan.sampled[0].astype(np.float32))
  norms = np.linalg.norm(np.asarray(uploads)[:, :f.D], axis=1)
  assert norms.max() <= 0.01 * (1 + 1e-5) and norms[plan.sampled[0]].min() > 0.0099


def test_dp_round_without_survivors_still_releases_noise():
  c = _config("tiny,dp", federated__dropouts__rate=1.0)
  f = _strategy(c)
  state = f.init(jax.random.PRNGKey(0))
  before = jax.flatten_util.ravel_pytree(state["params"])[0]
  state, row = f.run(state, 1)
  assert row["clients_dropped"] == row["clients_sampled"] > 0
  moved = jax.flatten_util.ravel_pytree(state["params"])[0] - before
  assert float(jnp.std(moved)) > 0     # the noise, as in any other round


def test_dp_fedavg_noise_std_and_epsilon():
  c = _config("tiny,dp", privacy__noise_multiplier=2.0, privacy__clip_norm=1.0,
              federated__client_lr=1e-9)     # updates ~ 0: what moves the server is the noise
  f = _strategy(c)
  state = f.init(jax.random.PRNGKey(0))
  before = jax.flatten_util.ravel_pytree(state["params"])[0]
  state, row = f.run(state, 1)
  moved = jax.flatten_util.ravel_pytree(state["params"])[0] - before
  expected = 2.0 * 1.0 / c.federated.clients_per_round
  assert abs(float(jnp.std(moved)) / expected - 1) < 0.05
  q = c.federated.clients_per_round / c.federated.clients
  event = dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(2.0)), 7)
  want = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(c.privacy.delta)
  assert f.privacy.accountant.epsilon(7) == pytest.approx(want, rel=1e-9)
  assert row["epsilon"] == pytest.approx(f.privacy.accountant.epsilon(1), rel=1e-9)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--config.federated.clients_per_round=30"],
     "config.federated.clients_per_round=30 is more than config.federated.clients=20"),
    (["--config.federated.clients=500", "--config.federated.clients_per_round=5"],
     "config.federated.clients=500 is more than the training set's 400 examples"),
    (["--config.federated.secure_aggregation=true", "--config.federated.secagg.threshold=6"],
     "config.federated.secagg.threshold=6 must be a majority"),
    (["--config.federated.secure_aggregation=true", "--config.federated.secagg.threshold=2"],
     "config.federated.secagg.threshold=2 must be a majority"),
    (["--config.data.partition=label", "--config.federated.clients=300",
      "--config.federated.clients_per_round=5"],
     "config.data.partition='label' leaves"),
    (["--config.privacy.mechanism=dpfedavg", "--config.privacy.clip_norm=0"],
     "config.privacy.clip_norm must be positive"),
    (["--config.federated.algorithm=fedsgd"], "config.federated.algorithm='fedsgd' is not one of"),
    (["--config.federated.algorithm=scaffold", "--config.privacy.mechanism=dpfedavg"],
     "with DP-FedAvg is not private"),
])
def test_bad_federated_input_gives_one_clear_line(args, message, tmp_path, capsys):
  assert_one_clear_line("fedavg.py:tiny", args, message, tmp_path / "w", capsys)
