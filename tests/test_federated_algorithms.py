"""Federated algorithms and DP-FedAvg against independent references: the papers' update rules
written out by hand (SCAFFOLD, FedProx, FedAdam / FedYogi) and DP-FedAvg's sensitivity on
neighbouring client populations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from conftest import max_diff, quiet_experiment
from pdist import data, optim, privacy, strategies, tasks
from pdist.strategies import federated


def _config(preset="tiny", **fields):
  return quiet_experiment("fedavg", preset, **fields)


def _strategy(c):
  return strategies.build(c, tasks.build(c, data.load(c.data)))


FULL = dict(data__num_train=40, federated__clients=4, federated__clients_per_round=4,
            federated__local_epochs=2, data__batch_size=10, federated__client_lr=0.3)


def _client_grad(f, params, i):
  """The gradient of client i's mean loss over all its examples (its full batch)."""
  idx = np.asarray(f.table)[i, :f.sizes[i]]
  batch = {k: jnp.asarray(np.asarray(v)[idx]) for k, v in f.data.items()}
  return jax.grad(lambda p: f.task.loss(p, batch, None)[0])(params)


def _tree_sub(a, b):
  return jax.tree.map(jnp.subtract, a, b)


def test_scaffold_matches_the_papers_option_two_written_by_hand():
  """Karimireddy et al. 2020, Algorithm 1 with option II, full participation, K = 2 full-batch
  local steps, server step size 1: y <- y - lr (g_i(y) - c_i + c); c_i+ = c_i - c + (x - y)/(K lr);
  x <- x + mean(y - x); c <- c + mean(c_i+ - c_i) (all N clients sampled)."""
  c = _config(**FULL, federated__algorithm="scaffold")
  f = _strategy(c)
  state = f.init(jax.random.PRNGKey(0))
  x = state["params"]
  lr, K, N = 0.3, 2, 4
  zero = jax.tree.map(jnp.zeros_like, x)
  cs, ci = zero, [zero] * N
  for _ in range(3):
    ys, new_ci = [], []
    for i in range(N):
      y = x
      for _ in range(K):
        y = jax.tree.map(lambda y, g, a, b: y - lr * (g - a + b), y, _client_grad(f, y, i),
                         ci[i], cs)
      ys.append(y)
      new_ci.append(jax.tree.map(lambda a, b, x0, y0: a - b + (x0 - y0) / (K * lr),
                                 ci[i], cs, x, y))
    x = jax.tree.map(lambda x0, *y: x0 + sum(yi - x0 for yi in y) / N, x, *ys)
    cs = jax.tree.map(lambda c0, *d: c0 + sum(d) / N, cs,
                      *[_tree_sub(a, b) for a, b in zip(new_ci, ci)])
    ci = new_ci
  state, _ = f.run(state, 3)
  assert max_diff(f.params(state), x) < 2e-5
  assert np.allclose(np.asarray(state["control"]), np.asarray(ravel_pytree(cs)[0]), atol=2e-5)
  for i in range(N):
    assert np.allclose(np.asarray(state["client_control"][i]),
                       np.asarray(ravel_pytree(ci[i])[0]), atol=2e-5)
  assert float(jnp.abs(state["control"]).max()) > 1e-3     # the variates are not trivially 0


def test_fedprox_local_steps_follow_the_proximal_gradient():
  """Li et al. 2020: each local step descends F_i(w) + mu/2 ||w - w_t||^2, i.e. the gradient
  g_i(w) + mu (w - w_t); after K = 2 steps the server averages."""
  mu = 0.7
  c = _config(**FULL, federated__algorithm="fedprox", federated__prox_mu=mu)
  f = _strategy(c)
  state = f.init(jax.random.PRNGKey(0))
  x, lr = state["params"], 0.3
  ys = []
  for i in range(4):
    y = x
    for _ in range(2):
      y = jax.tree.map(lambda y, g, x0: y - lr * (g + mu * (y - x0)), y, _client_grad(f, y, i), x)
    ys.append(y)
  want = jax.tree.map(lambda *y: sum(y) / 4, *ys)
  state, _ = f.run(state, 1)
  assert max_diff(f.params(state), want) < 2e-6
  plain = _strategy(_config(**FULL))     # the proximal term matters at this mu
  ps, _ = plain.run(plain.init(jax.random.PRNGKey(0)), 1)
  assert max_diff(plain.params(ps), want) > 1e-4


@pytest.mark.parametrize("kind", ["adam", "yogi"])
def test_fedopt_is_reddi_et_al_algorithm_two(kind):
  """FedAdam / FedYogi (Reddi et al. 2021, Algorithm 2): b1 0.9, b2 0.99, tau 1e-3, v_{-1} =
  tau^2, no bias correction; x <- x + lr m / (sqrt(v) + tau) with Delta = -pseudo-gradient."""
  c = _config(optim__name=kind, optim__learning_rate=0.01)
  tx = federated.server_optimizer(c)
  rng = np.random.default_rng(0)
  x = {"w": rng.normal(size=(5, 3)).astype(np.float32)}
  state = tx.init(x)
  m, v, tau, xr = np.zeros((5, 3)), np.full((5, 3), 1e-6), 1e-3, x["w"].astype(np.float64)
  for t in range(6):
    delta = rng.normal(scale=10.0 ** -(t % 3), size=(5, 3))     # the average client change
    m = 0.9 * m + 0.1 * delta
    if kind == "adam":
      v = 0.99 * v + 0.01 * delta ** 2
    else:
      v = v - 0.01 * delta ** 2 * np.sign(v - delta ** 2)
    xr = xr + 0.01 * m / (np.sqrt(v) + tau)
    updates, state = tx.update({"w": jnp.asarray(-delta, jnp.float32)}, state, x)
    x = {"w": np.asarray(x["w"]) + np.asarray(updates["w"])}
  np.testing.assert_allclose(x["w"], xr, rtol=2e-5, atol=1e-6)
  optax_form = federated.server_optimizer(_config(optim__name=kind, optim__learning_rate=0.01,
                                                  federated__fedopt="optax"))
  # the optax form stays available
  assert not any(isinstance(s, optim.FedOptState) for s in optax_form.init(x))


def test_fedopt_fields_apply_only_to_adaptive_servers():
  from pdist import config as config_lib
  with pytest.raises(config_lib.ConfigError, match="apply to a server optimizer"):
    _config(federated__fedopt_tau=1e-2)


# -- DP-FedAvg with secure aggregation: sensitivity on neighbouring populations -------------------
def _neighbours(clip=0.5, rate=0.45, **fields):
  """Two strategies of one config whose populations differ in client `j`'s data only (its
  examples replaced by others with other labels), noise 0."""
  c = _config("tiny,dp,secagg", privacy__noise_multiplier=0.0, privacy__clip_norm=clip,
              federated__dropouts__rate=rate, **fields)
  a, b = _strategy(c), _strategy(c)
  j = 3
  rows = np.asarray(b.table)[j, :b.sizes[j]]
  x, y = np.asarray(b.data["x"]).copy(), np.asarray(b.data["y"]).copy()
  x[rows] = -3.0 * x[rows[::-1]] + 1.0
  y[rows] = (y[rows] + 3) % 10
  b.data = jax.device_put({**b.data, "x": x, "y": y})
  return c, a, b, j


def test_dp_fedavg_with_secure_aggregation_keeps_its_sensitivity_whatever_the_dropouts():
  """Each round from the same state: the released averages of the two neighbouring populations
  differ by at most the sensitivity / m (2C plus the fixed-point rounding, over m clients),
  failed rounds (fewer than t of the m survive) fail in both, and each round samples exactly m.
  Under the Poisson sampling used before, one client's presence could flip a round between
  failing and succeeding: a change of up to t C."""
  c, a, b, j = _neighbours()
  m = c.federated.clients_per_round
  bound = a.privacy.sensitivity * c.privacy.clip_norm / m
  assert a.privacy.sensitivity == pytest.approx(2 + math.sqrt(a.D) / 2 ** 16 / 0.5)
  state = a.init(jax.random.PRNGKey(0))
  failed, with_j, moved = 0, 0, []
  for r in range(12):
    plan = a.planner.plan(r, 1)
    assert plan.sampled[0].sum() == m          # fixed-size, whatever the population holds
    before = ravel_pytree(state["params"])[0]
    sa, row_a = a.run(jax.tree.map(jnp.copy, state), 1)
    sb, row_b = b.run(jax.tree.map(jnp.copy, state), 1)
    assert row_a["rounds_failed"] == row_b["rounds_failed"]
    diff = float(jnp.linalg.norm(ravel_pytree(sa["params"])[0] - ravel_pytree(sb["params"])[0]))
    assert diff <= bound * (1 + 1e-5), (r, diff, bound)
    round_failed = row_a["rounds_failed"] > failed
    failed = row_a["rounds_failed"]
    if not round_failed and j in set(plan.clients[0][plan.survived[0]]):
      with_j += 1
      moved.append(diff)
    if round_failed:
      assert float(jnp.abs(ravel_pytree(sa["params"])[0] - before).max()) == 0.0
    state = sa
  assert failed >= 1 and with_j >= 1      # both cases were exercised
  assert max(moved) > 0.5 * c.privacy.clip_norm / m   # and the bound is not vacuous


def test_dp_fedavg_with_secure_aggregation_accounts_replace_one_without_replacement():
  """All clients every round (m = N): the mechanism is a Gaussian with replace-one sensitivity
  Delta = 2C (+ rounding) and noise sigma C, so RDP(a) = T a Delta^2 / (2 sigma^2 C^2) exactly and
  the classic conversion has the closed form T s / 2 + sqrt(2 T s log(1/delta)), s =
  (Delta / (sigma C))^2, from below on dp-accounting's grid of orders."""
  c = _config("tiny,dp,secagg", federated__clients_per_round=20, privacy__noise_multiplier=6.0,
              privacy__accountant="rdp_classic", privacy__delta=1e-5)
  mech = privacy.build(c, 20, update_size=1000)
  assert mech.sampling == "fixed-size" and mech.cap is None
  T, s = 30, (mech.sensitivity / 6.0) ** 2
  best = T * s / 2 + math.sqrt(2 * T * s * math.log(1e5))
  assert best <= mech.accountant.epsilon(T) <= best * 1.005
  info = mech.describe(T)
  assert info["neighbouring_relation"] == "replace one client"
  assert info["delta_total"] == 1e-5


def test_a_run_whose_every_round_fails_says_so(tmp_path):
  from pdist import __main__ as cli
  from pdist import metrics
  work = str(tmp_path / "w")
  code = cli.main(["--config", "experiments/fedavg.py:tiny,secagg", "--workdir", work,
                   "--config.federated.dropouts.rate=1.0", "--config.train.steps=4",
                   "--config.train.progress=false"])
  assert code == 3
  summary = metrics.read_json(f"{work}/summary.json")
  assert summary["status"] == "stopped" and "all 4 rounds failed" in summary["stopped_because"]
  assert metrics.read(work)[-1]["rounds_failed"] == 4


def test_secure_rounds_follow_the_dropout_phases_and_pay_for_the_protocol():
  """SecAgg+ (a Harary graph) with clients that drop before and after their upload: the secure
  run equals the plain run with the same dropouts to quantisation (uploads of clients that left
  after uploading are in both sums), and its simulated time adds the protocol's six messages a
  round at latency 1 (keys up and down, shares up and down, survivors down, unmasking up)."""
  fields = dict(federated__clients_per_round=20, federated__dropouts__rate=0.3,
                federated__dropouts__after_upload=0.5, network__latency=1.0, train__steps=6)
  from pdist import train
  plain = train.run(_config(**fields), None)
  secure = train.run(_config("tiny,secagg", federated__secagg__graph="harary",
                             federated__secagg__delta=0.3, **fields), None)
  f = secure.strategy
  assert f.secagg.graph == "harary" and (f.secagg.degree, f.secagg.threshold) == (8, 2)
  phases = f.planner.plan(0, 6).phase
  assert (phases == 2).any() and (phases == 1).any()       # both kinds of dropout happened
  last = secure.rows[-1]
  assert last["rounds_failed"] == 0
  assert max_diff(plain.params, secure.params) < 1e-3
  assert last["secagg_sim_time"] == 6 * 6
  assert last["sim_time"] == pytest.approx(plain.rows[-1]["sim_time"] + 36)
  assert last["clients_dropped"] == plain.rows[-1]["clients_dropped"] > 0
  assert last["secagg_bytes_up"] > 0 and last["secagg_bytes_down"] > 0


def test_secagg_plus_that_cannot_fit_is_one_sentence():
  from pdist import config as config_lib
  with pytest.raises(config_lib.ConfigError, match="graph='harary' with 5 clients a round"):
    _config("tiny,secagg", federated__secagg__graph="harary", federated__secagg__gamma=0.5,
            federated__secagg__delta=0.5)
  with pytest.raises(config_lib.ConfigError, match="threshold applies to graph='complete'"):
    _config("tiny,secagg", federated__clients_per_round=10, federated__secagg__graph="harary",
            federated__secagg__threshold=6)


def test_under_dp_who_takes_part_never_depends_on_how_much_data_clients_hold():
  """The plan of a DP-FedAvg round (who is sampled, who drops out in which phase) is the same
  whatever the clients' sizes; a deadline, which would drop clients by their work, is refused."""
  from pdist import config as config_lib
  from pdist.federated import rounds
  c = _config("tiny,dp,secagg", federated__dropouts__rate=0.3,
              federated__dropouts__after_upload=0.5)
  sizes = np.full(20, 20)
  other = sizes.copy()
  other[3] = 200                      # one client holds ten times the data
  a = rounds.RoundPlanner(c.federated, c.network, sizes, 10, 0, 1, 1).plan(0, 30)
  b = rounds.RoundPlanner(c.federated, c.network, other, 10, 0, 1, 1).plan(0, 30)
  for field in ("clients", "sampled", "survived", "phase"):
    assert np.array_equal(getattr(a, field), getattr(b, field)), field
  with pytest.raises(config_lib.ConfigError, match="deadline with DP-FedAvg"):
    _config("tiny,dp,secagg", federated__deadline=5.0)


def test_a_private_federated_run_logs_only_public_fields(tmp_path):
  """An allowlist, not a blacklist: every field DP-FedAvg with secure aggregation writes to
  metrics.jsonl and summary.json is public (the config, the step, public randomness) or computed
  from the released parameters."""
  from pdist import metrics, train
  train.run(_config("tiny,dp,secagg", federated__dropouts__rate=0.2, train__steps=4,
                    train__log_every=2), str(tmp_path))
  bookkeeping = {"clients_sampled", "clients_dropped", "bytes_uploaded", "bytes_downloaded",
                 "rounds_failed", "secagg_failed_rounds", "secagg_client_seconds",
                 "secagg_server_seconds", "secagg_sim_time", "secagg_bytes_up",
                 "secagg_bytes_down"}
  allowed = {"step", "epoch", "epsilon", "steps_per_sec", "wall_time"} | bookkeeping
  for row in metrics.read(str(tmp_path)):
    assert {k for k in row if not k.startswith("eval_")} <= allowed, row
  summary = metrics.read_json(str(tmp_path / "summary.json"))
  allowed_summary = allowed | {"privacy", "federated", "status", "steps", "strategy",
                               "resumed_from", "wall_seconds", "updates_per_sec", "provenance"}
  assert {k for k in summary if not k.startswith("eval_")} <= allowed_summary
  assert summary["federated"] == {"clients": 20}      # not the clients' sizes
