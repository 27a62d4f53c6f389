"""Online codistillation: one replica is plain training, zero weight is independent runs, the
stale copies refresh exactly at the exchanges, resume is exact."""

import jax
import numpy as np
import pytest

from conftest import assert_one_clear_line, max_diff, quiet_experiment, switch_strategy
from pdist import train
from pdist.network import Network


def _config(**fields):
  return quiet_experiment("codistill", "tiny", model__hidden=(32,), **fields)


def _single(seed):
  c = switch_strategy(_config(train__seed=seed), "single")
  return train.run(c).params


def test_one_replica_is_plain_training():
  got = train.run(_config(codistill__replicas=1)).params
  assert max_diff(got, _single(0)) < 1e-6


def test_zero_weight_is_independent_runs():
  result = train.run(_config(codistill__weight=0.0, codistill__exchange_every=1))
  for g in range(2):
    replica = jax.tree.map(lambda p: p[g], result.state["params"])
    assert max_diff(replica, _single(g)) < 1e-6
  distilled = train.run(_config(codistill__weight=0.5, codistill__exchange_every=1))
  assert max_diff(distilled.state["params"], result.state["params"]) > 1e-4   # it matters


def test_stale_copies_refresh_at_exchanges_and_bytes_are_counted():
  c = _config(codistill__exchange_every=3, network__latency=0.0, network__bandwidth=0.0)
  from pdist import data, strategies, tasks
  s = strategies.build(c, tasks.build(c, data.load(c.data)))
  state = s.init(None)
  start = jax.tree.map(np.asarray, state["params"])
  state, row = s.run(state, 2)
  assert max_diff(state["stale"], start) == 0                    # no exchange yet
  state, row = s.run(state, 1)
  assert max_diff(state["stale"], state["params"]) == 0          # the exchange at update 3
  state, row = s.run(state, 2)
  assert max_diff(state["stale"], state["params"]) > 0
  assert row["exchanges"] == 1 and row["bytes_exchanged"] == 2 * s.model_bytes
  assert row["bytes_exchanged_data_parallel"] == 5 * 2 * s.model_bytes
  assert row["sim_time"] == row["sim_time_data_parallel"] == 5.0   # no network cost set
  c.network.latency, c.network.bandwidth = 0.5, float(s.model_bytes)   # one model per time unit
  s.network = Network(c.network)
  assert s.sim_times(5) == (5 + 1 * (0.5 + 1.0), 5 * (1 + 2 * 0.5 + 1.0))


def test_resume_is_bit_identical(tmp_path):
  ref = train.run(_config(train__steps=20, checkpoint__every=10), str(tmp_path / "ref"))
  work = str(tmp_path / "run")
  train.run(_config(train__steps=10, checkpoint__every=10), work)
  resumed = train.run(_config(train__steps=20, checkpoint__every=10), work)
  assert resumed.summary["resumed_from"] == 10
  for a, b in zip(jax.tree.leaves(ref.state), jax.tree.leaves(resumed.state)):
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("args, message", [
    (["--config.codistill.weight=1.5"], "config.codistill.weight must be in [0, 1]"),
    (["--config.codistill.replicas=0"], "config.codistill.replicas must be positive"),
    (["--config.distill.teacher=runs/x"], "learns from its own replicas"),
    # the tiny preset trains 20 updates: update 20 would be the first to distil
    (["--config.codistill.burn_in=20"],
     "config.codistill.burn_in=20 must be below config.train.steps=20, or the distillation "
     "term never starts"),
    (["--config.codistill.burn_in=1000", "--config.train.steps=30"],
     "config.codistill.burn_in=1000 must be below config.train.steps=30"),
])
def test_bad_codistill_input_gives_one_clear_line(args, message, tmp_path, capsys):
  assert_one_clear_line("codistill.py:tiny", args, message, tmp_path / "w", capsys)


def test_a_burn_in_that_ends_before_the_last_update_is_accepted_and_distils():
  late = train.run(_config(codistill__burn_in=19))   # validated: update 19, the last, distils
  plain = train.run(_config(codistill__weight=0.0))   # never distils
  assert late.rows[0]["step"] == 10 and late.rows[0]["loss"] == plain.rows[0]["loss"]
  assert max_diff(late.params, plain.params) > 0


def _servers(**fields):
  """Codistillation between async parameter servers of 3 workers (experiments/codistill.py:ps,
  lognormal compute times)."""
  return quiet_experiment("codistill", "tiny,ps", model__hidden=(32,), ps__workers=3,
                          train__log_every=5, **fields)


def _ps(seed):
  c = switch_strategy(_servers(train__seed=seed), "ps")
  return train.run(c)


def test_one_parameter_server_group_is_the_ps_run():
  got = train.run(_servers(codistill__replicas=1))
  ref = _ps(0)
  assert max_diff(got.params, ref.params) < 1e-5
  assert got.rows[-1]["staleness_mean"] == ref.rows[-1]["staleness_mean"]
  assert got.rows[-1]["sim_time"] == ref.rows[-1]["sim_time"]


@pytest.mark.long   # 19 s; codistillation's zero-weight equivalence for sync runs is in make test
def test_parameter_server_groups_at_zero_weight_are_independent_ps_runs(tmp_path):
  result = train.run(_servers(codistill__weight=0.0, codistill__exchange_every=4))
  for g in range(2):
    group = jax.tree.map(lambda p: p[g], result.state["groups"]["params"])
    assert max_diff(group, _ps(g).params) < 1e-5
  distilled = train.run(_servers(codistill__exchange_every=4, checkpoint__every=10),
                        str(tmp_path / "run"))
  assert max_diff(distilled.state["groups"]["params"], result.state["groups"]["params"]) > 1e-4
  assert distilled.rows[-1]["exchanges"] == 5 and distilled.rows[-1]["bytes_pushed"] > 0
  # a row's clock and totals are those at its own step, not the next chunk's (rows every 5)
  short = train.run(_servers(codistill__weight=0.0, codistill__exchange_every=4,
                             train__steps=10)).rows[-1]
  row = next(r for r in result.rows if r["step"] == 10)
  assert (row["sim_time"], row["bytes_pushed"]) == (short["sim_time"], short["bytes_pushed"])
  resumed = train.run(_servers(codistill__exchange_every=4, checkpoint__every=10,
                               train__steps=30), str(tmp_path / "run"))   # 20 -> 30, resumed
  fresh = train.run(_servers(codistill__exchange_every=4, train__steps=30))
  assert resumed.summary["resumed_from"] == 20
  assert max_diff(resumed.state["groups"]["params"], fresh.state["groups"]["params"]) == 0
