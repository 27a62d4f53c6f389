"""The parameter server: equivalences, the delayed recursion, consistency bounds, determinism."""

import jax
import numpy as np
import pytest

from conftest import load_experiment, max_diff, set_fields
from pdist import config as config_lib
from pdist import data, metrics, pipeline, strategies, tasks, train
from pdist.config import base_config
from pdist.ps import AsyncOp, BspRound, ParameterServer, Simulator, sharding


def _config(strategy="ps", batch=16, steps=40, log_every=10, **fields):
  c = load_experiment("mnist1d", "tiny")
  c.strategy = strategy
  c.optim.name, c.optim.momentum, c.optim.learning_rate = "sgd", 0.9, 0.05
  c.data.batch_size = batch
  c.model.hidden = (32, 32)
  c.train.steps, c.train.log_every, c.train.eval_every = steps, log_every, 0
  c.train.progress = False
  return set_fields(c, **fields)



def test_async_one_worker_equals_single_in_parameters_and_metrics(tmp_path):
  """One async worker is single-device SGD: same parameters, and every deterministic field of
  the shared metrics (loss and accuracy of the gradients applied, eval, epoch) agrees."""
  ref = train.run(_config("single", steps=30, log_every=5, train__eval_every=10),
                  str(tmp_path / "single"))
  got = train.run(_config(steps=30, log_every=5, train__eval_every=10, ps__workers=1,
                          ps__consistency="async"), str(tmp_path / "ps"))
  assert max_diff(ref.params, got.params) < 1e-6
  assert got.summary["staleness_max"] == 0
  rows_ref, rows_got = metrics.read(str(tmp_path / "single")), metrics.read(str(tmp_path / "ps"))
  assert [r["step"] for r in rows_ref] == [r["step"] for r in rows_got] == [5, 10, 15, 20, 25, 30]
  for a, b in zip(metrics.without_timing(rows_ref), metrics.without_timing(rows_got)):
    for key in a:
      assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (a["step"], key)


def test_replay_step_applies_the_slot_then_refills_it():
  """One hand-built async op, against the math written out: apply worker 1's gradient, then
  worker 1 pulls and computes its next gradient at the new parameters."""
  c = _config(ps__workers=2, steps=1)
  c.optim.momentum = 0.0
  strategy = train.run(c).strategy
  state = strategy.init(jax.random.PRNGKey(0))
  g0 = jax.tree.map(lambda p: np.full(p.shape, 0.5, p.dtype), state["params"])
  state["slots"]["grads"] = jax.tree.map(lambda s, g: s.at[1].set(g), state["slots"]["grads"], g0)
  state["slots"]["metrics"]["loss"] = state["slots"]["metrics"]["loss"].at[1].set(2.5)
  params0 = jax.device_get(state["params"])
  ops = [AsyncOp(apply_worker=1, scale=0.5, pull_worker=1, pull_iteration=7)]
  state, (sums, count) = strategy._chunk(state, strategy.data, strategy._encode_ops(ops, 1))
  expected = jax.tree.map(lambda p: p - 0.05 * 0.5 * 0.5, params0)
  assert max_diff(state["params"], expected) < 1e-7
  assert int(state["step"]) == 1 and list(np.asarray(state["versions"])) == [1]
  assert float(count) == 1 and float(sums["loss"]) == 2.5  # the loss of the gradient applied
  batch = {k: v[strategy.worker_batch(1, 7)] for k, v in
           {"x": strategy.task.dataset.x_train, "y": strategy.task.dataset.y_train}.items()}
  want = jax.grad(lambda p: strategy.task.loss(p, batch, None)[0])(expected)
  assert max_diff(jax.tree.map(lambda s: s[1], state["slots"]["grads"]), want) < 1e-6
  assert max_diff(jax.tree.map(lambda s: s[0], state["slots"]["grads"]),
                  jax.tree.map(np.zeros_like, want)) == 0.0  # worker 0's slot untouched


@pytest.mark.parametrize("per_worker", [False, True])
def test_bsp_round_averages_per_worker_gradients_of_the_concatenated_batch(per_worker):
  """One round by hand: the mean of the workers' gradients equals the gradient of their
  concatenated batches, whether computed per worker (a local pipeline is present) or at once."""
  c = _config(ps__workers=3, ps__consistency="bsp", data__partition="iid", steps=1)
  c.optim.momentum = 0.0
  task = tasks.build(c, data.load(c.data))
  pipe = pipeline.Pipeline(pipeline.identity() if per_worker else pipeline.IDENTITY,
                           pipeline.IDENTITY)
  strategy = strategies.build(c, task, pipeline=pipe)
  assert pipe.local_is_identity != per_worker
  state = strategy.init(jax.random.PRNGKey(0))
  params0 = jax.device_get(state["params"])
  state, m = strategy._chunk(state, strategy.data,
                             strategy._encode_rounds([BspRound(workers=(0, 1, 2), round=4)]))
  idx = np.concatenate([strategy.worker_batch(w, 4) for w in range(3)])
  batch = {"x": task.dataset.x_train[idx], "y": task.dataset.y_train[idx]}
  (loss, _), grads = jax.value_and_grad(lambda p: task.loss(p, batch, None), has_aux=True)(params0)
  expected = jax.tree.map(lambda p, g: p - 0.05 * g, params0, grads)
  assert max_diff(state["params"], expected) < 1e-6
  assert float(m["loss"]) == pytest.approx(float(loss), rel=1e-6)


@pytest.mark.parametrize("workers", [2, 4])
def test_bsp_equals_single_with_the_global_batch(workers):
  ref = train.run(_config("single", batch=16 * workers))
  got = train.run(_config(ps__workers=workers, ps__consistency="bsp", data__partition="shared",
                          ps__compute_time__dist="lognormal", ps__compute_time__spread=0.5))
  assert max_diff(ref.params, got.params) < 1e-5
  assert all(r["staleness_max"] == 0 for r in got.rows)


@pytest.mark.parametrize("tau", [0, 1, 3, 7])
def test_fixed_delay_follows_the_delayed_recursion(tau):
  """K = tau + 1 equal-speed async workers: every gradient is exactly tau versions stale."""
  c = load_experiment("seed_quadratic", "")
  c.strategy, c.ps.workers, c.ps.consistency = "ps", tau + 1, "async"
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.progress = 60, 20, 0, False
  r = train.run(c)
  theta0 = np.asarray(r.strategy.task.init(jax.random.PRNGKey(c.train.seed))["theta"], np.float64)
  lr, d = c.optim.learning_rate, c.data.dim
  hist = [theta0]
  for t in range(60):  # theta_{t+1} = theta_t - lr * (2/d) * theta_{t-tau}, theta_{<0} = theta_0
    hist.append(hist[t] - lr * (2 / d) * hist[max(t - tau, 0)])
  np.testing.assert_allclose(np.asarray(r.params["theta"]), hist[-1], rtol=1e-5, atol=1e-7)
  assert all(row["staleness_max"] == tau for row in r.rows[1:])


def test_async_mean_staleness_is_workers_minus_one():
  r = train.run(_config(ps__workers=4, ps__consistency="async", steps=40, log_every=8))
  assert [row["staleness_mean"] for row in r.rows[1:]] == [3.0] * 4
  assert r.rows[0]["staleness_mean"] < 3.0  # the first round staggers: 0, 1, 2, 3, then 3s


def _ps_config(seed, **fields):
  c = base_config()
  c.ps.workers = 6
  c.train.seed = seed
  return set_fields(c, **fields)


def test_ssp_clock_gap_never_exceeds_bound_under_random_timing():
  rng = np.random.default_rng(0)
  hit_bound = 0
  for seed in range(25):
    s = int(rng.integers(1, 4))
    c = _ps_config(seed, ps__consistency="ssp", ps__max_staleness=s,
                   ps__workers=int(rng.integers(2, 9)),
                   ps__compute_time__dist="lognormal",
                   ps__compute_time__spread=float(rng.uniform(0.1, 1.5)),
                   ps__stragglers__fraction=float(rng.uniform(0, 0.5)),
                   ps__stragglers__factor=float(rng.uniform(1, 6)),
                   network__latency=float(rng.uniform(0, 0.3)),
                   ps__failures__rate=float(rng.uniform(0, 0.05)),
                   ps__failures__restart_delay=float(rng.uniform(0.5, 5)))
    sim = Simulator(c.ps, c.network, [1000, 3000], seed=seed)
    for _ in range(20):
      sim.advance(10)
      gap = max(sim.clock) - min(sim.clock)
      assert gap <= s, (seed, gap, s)
      hit_bound += gap == s
  assert hit_bound > 0  # the bound actually binds under these timings


def test_async_staleness_is_unbounded_where_ssp_bounds_it():
  kw = dict(ps__workers=4, ps__stragglers__fraction=0.25, ps__stragglers__factor=8.0)
  c = _ps_config(0, **kw)
  async_sim = Simulator(c.ps, c.network, [1000], seed=0)
  ssp_sim = Simulator(_ps_config(0, ps__consistency="ssp", ps__max_staleness=2, **kw).ps,
                      c.network, [1000], seed=0)
  async_gap = max(max(async_sim.clock) - min(async_sim.clock)
                  for _ in range(10) if async_sim.advance(20))
  ssp_int = [ssp_sim.advance(20) for _ in range(10)]
  assert async_gap > 2 and max(i.max_clock_gap for i in ssp_int) <= 2


def test_same_config_twice_gives_identical_metrics(tmp_path):
  kw = dict(ps__workers=5, ps__consistency="async", ps__compute_time__dist="lognormal",
            ps__compute_time__spread=0.7, ps__stragglers__fraction=0.4,
            ps__stragglers__factor=4.0, network__latency=0.1, network__bandwidth=1e7,
            ps__failures__rate=0.05, ps__failures__restart_delay=2.0,
            ps__failures__at=((3.0, 1),), ps__staleness_lr="inverse")
  for name in ("a", "b"):
    train.run(_config(**kw), str(tmp_path / name))
  a, b = metrics.read(str(tmp_path / "a")), metrics.read(str(tmp_path / "b"))
  assert metrics.without_timing(a) == metrics.without_timing(b)
  assert a[-1]["crashes"] >= 1 and a[-1]["dropped_gradients"] >= 1


def test_sharded_server_equals_central_when_timing_is_equal():
  kw = dict(ps__workers=3, ps__consistency="async", network__latency=0.2,
            ps__compute_time__dist="lognormal", ps__compute_time__spread=0.5,
            ps__staleness_lr="inverse")
  central = train.run(_config(ps__shards=1, **kw))
  sharded = train.run(_config(ps__shards=4, **kw))
  assert len(sharded.strategy.shards) == 4
  assert max_diff(central.params, sharded.params) < 1e-6
  assert metrics.without_timing(central.rows) == metrics.without_timing(sharded.rows)


def test_shards_are_balanced_by_bytes():
  params = {"a": np.zeros(1000, np.float32), "b": np.zeros(600, np.float32),
            "c": np.zeros(500, np.float32), "d": np.zeros(100, np.float32)}
  shards = sharding.partition_leaves(params, 2)
  assert sharding.shard_bytes(params, shards) == [4400, 4400]  # {a, d} and {b, c}
  with pytest.raises(config_lib.ConfigError, match="only 4 parameter arrays"):
    sharding.partition_leaves(params, 5)


def test_eager_server_replaying_the_schedule_equals_the_compiled_strategy():
  c = _config(ps__workers=3, ps__shards=2, ps__consistency="async", ps__staleness_lr="inverse",
              ps__compute_time__dist="lognormal", ps__compute_time__spread=0.8, steps=30)
  compiled = train.run(c)
  strategy = train.run(_config(ps__workers=3, ps__shards=2, steps=1)).strategy  # fresh helpers
  state = strategy.init(jax.random.PRNGKey(c.train.seed))
  server = ParameterServer(state["params"], strategy.tx, num_shards=2, staleness_lr="inverse")
  workers = [strategy.make_worker(k, state) for k in range(3)]
  sim = Simulator(c.ps, c.network, strategy.shard_bytes, seed=c.train.seed)
  pending = {}
  for op in sim.advance(30).ops:
    if op.apply_worker >= 0:
      grads, versions = pending.pop(op.apply_worker)
      server.push(op.apply_worker, grads, versions)
    if op.pull_worker >= 0:
      _, versions = server.pull()
      pending[op.pull_worker] = (workers[op.pull_worker].compute(server.params,
                                                                 op.pull_iteration), versions)
  assert server.versions == [30, 30]
  assert max_diff(compiled.params, server.params) < 1e-5


def test_backup_workers_drop_the_slowest_and_save_time():
  kw = dict(ps__workers=5, ps__consistency="bsp", data__partition="shared",
            ps__stragglers__fraction=0.2, ps__stragglers__factor=5.0)
  plain = train.run(_config(**kw, steps=20))
  backup = train.run(_config(**kw, ps__backup_workers=1, steps=20))
  assert plain.summary["dropped_gradients"] == 0
  assert backup.summary["dropped_gradients"] == 20  # the straggler, every round
  assert backup.summary["sim_time"] * 3 < plain.summary["sim_time"]
  assert plain.summary["sim_time"] == pytest.approx(20 * 5.0)


def test_scripted_crash_loses_the_in_flight_gradient():
  r = train.run(_config(ps__workers=2, ps__failures__at=((2.5, 0),),
                        ps__failures__restart_delay=1.0, steps=20))
  assert r.summary["crashes"] == 1 and r.summary["dropped_gradients"] == 1
  # worker 1 pushes at 1, 2, ..., 11 (11 updates); worker 0 at 1, 2, then its gradient due at 3
  # is lost in the crash at 2.5, it restarts at 3.5 and pushes at 4.5, ..., 10.5 (9 updates)
  assert r.summary["sim_time"] == pytest.approx(11.0)


def test_a_scripted_crash_after_the_end_is_said_not_to_have_happened(tmp_path, capsys):
  """The run of test_scripted_crash_loses_the_in_flight_gradient ends at simulated time 11:
  a crash scripted at 11.5 never happens, which summary.json and a warning say; continued to 40
  updates, the run reaches it."""
  fields = dict(ps__workers=2, ps__failures__at=((2.5, 0), (11.5, 1)),
                ps__failures__restart_delay=1.0)
  r = train.run(_config(steps=20, **fields), str(tmp_path))
  assert r.summary["sim_time"] == pytest.approx(11.0) and r.summary["crashes"] == 1
  assert r.summary["scripted_failures_not_reached"] == [[11.5, 1]]
  assert metrics.read_json(str(tmp_path / "summary.json"))["scripted_failures_not_reached"] == [
      [11.5, 1]]
  err = capsys.readouterr().err
  assert ("warning: the run ended at simulated time 11, before config.ps.failures.at's "
          "(time 11.5, worker 1), which therefore never happened") in err
  longer = train.run(_config(steps=40, **fields), str(tmp_path))
  assert longer.summary["resumed_from"] == 20 and longer.summary["crashes"] == 2
  assert "scripted_failures_not_reached" not in longer.summary
  assert "warning" not in capsys.readouterr().err


def test_network_time_and_bytes():
  r = train.run(_config(ps__workers=1, network__latency=0.5, steps=10, log_every=10))
  n_bytes = sum(x.size * 4 for x in jax.tree.leaves(r.params))
  assert r.summary["bytes_pushed"] == 10 * n_bytes
  assert r.summary["bytes_pulled"] == 11 * n_bytes  # the first pull, then one after each push
  # first pull request 0.5, then each iteration: reply 0.5 + compute 1 + push 0.5
  assert r.summary["sim_time"] == pytest.approx(0.5 + 10 * 2.0)


def test_simulator_state_round_trips_through_json():
  c = _ps_config(3, ps__consistency="ssp", ps__max_staleness=2, ps__failures__rate=0.1,
                 ps__compute_time__dist="lognormal", ps__compute_time__spread=0.5)
  a = Simulator(c.ps, c.network, [100], seed=3)
  a.advance(15)
  b = Simulator(c.ps, c.network, [100], seed=3)
  b.load_state_dict(a.state_dict())
  ia, ib = a.advance(25), b.advance(25)
  assert ia.ops == ib.ops and ia.staleness == ib.staleness and a.totals == b.totals


@pytest.mark.parametrize("fields, message", [
    ({"ps__consistency": "ssp"}, "needs config.ps.max_staleness >= 1"),
    ({"ps__backup_workers": 4, "ps__consistency": "bsp"}, "backup_workers=4 must be below"),
    ({"ps__backup_workers": 1}, "backup_workers only applies to config.ps.consistency='bsp'"),
    ({"network__latency": -1.0}, "config.network.latency must be non-negative"),
    ({"ps__compute_time__mean": 0.0}, "config.ps.compute_time.mean must be positive"),
    ({"ps__failures__at": ((1.0, 9),)}, "config.ps.failures.at entries must be"),
    ({"ps__consistency": "hogwild"}, "config.ps.consistency='hogwild' is not one of"),
    ({"ps__shards": 50}, "config.ps.shards=50 but the model has only 6 parameter arrays"),
    ({"data__partition": "shared", "ps__workers": 1000}, "a global batch of 1000 workers x"),
])
def test_ps_config_errors(fields, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    train.run(_config(**fields))


@pytest.mark.parametrize("branch_free", [False, True])
def test_replay_updates_the_gradient_slots_in_place(branch_free):
  """No step of the compiled replay copies the [K, ...] array of in-flight gradients: at K=256
  such a copy (two per step once) made the branch-free replay 45x slower than at K=4."""
  c = _config(ps__workers=8, ps__compute_time__dist="lognormal", ps__compute_time__spread=0.5)
  task = tasks.build(c, data.load(c.data))
  strategy = strategies.ps.ParameterServerStrategy(c, task, branch_free=branch_free)
  state = strategy.init(jax.random.PRNGKey(0))
  ops = strategy.simulator.advance(40).ops
  hlo = strategy._chunk.lower(state, strategy.data,
                              strategy._encode_ops(ops[:16], 16)).compile().as_text()
  slot_shapes = {"f32[8," + ",".join(map(str, x.shape[1:])) + "]"
                 for x in jax.tree.leaves(state["slots"]["grads"])}
  copies = [line for line in hlo.splitlines() if " copy(" in line
            and any(line.split("=")[1].strip().startswith(s) for s in slot_shapes)]
  assert slot_shapes and not copies, copies[:2]


@pytest.mark.parametrize("fields", [
    dict(ps__workers=3, ps__consistency="async", ps__staleness_lr="inverse",
         ps__compute_time__dist="lognormal", ps__compute_time__spread=0.7),
    dict(ps__workers=4, ps__consistency="ssp", ps__max_staleness=1,
         ps__stragglers__fraction=0.25, ps__stragglers__factor=4.0,
         ps__failures__at=((2.5, 1),)),
    dict(ps__workers=3, ps__consistency="async", compression__name="topk",
         compression__ratio=0.1),  # per-worker pipeline state, selected slice by slice
])
def test_branch_free_replay_equals_the_cond_replay(fields):
  """The accelerator replay (no lax.cond, results kept by selection) against the CPU one: the
  same parameters and rows to float rounding (XLA fuses the two programs differently), through
  pull-only, apply-only (ssp waits, a crash) and padding steps."""
  c = _config(steps=30, log_every=10, **fields)
  task = tasks.build(c, data.load(c.data))
  runs = []
  for branch_free in (False, True):
    strategy = strategies.ps.ParameterServerStrategy(c, task, branch_free=branch_free)
    state = strategy.init(jax.random.PRNGKey(c.train.seed))
    rows = []
    for _ in range(3):
      state, row = strategy.run(state, 10)
      rows.append(row)
    runs.append((state, rows))
  (s0, r0), (s1, r1) = runs
  assert max_diff(s0["params"], s1["params"]) < 1e-6
  if jax.tree.leaves(s0["pipeline"]):
    assert max_diff(s0["pipeline"], s1["pipeline"]) < 1e-6
  assert max_diff(s0["slots"]["grads"], s1["slots"]["grads"]) < 1e-6
  assert int(s0["step"]) == int(s1["step"]) == 30
  for a, b in zip(r0, r1):
    assert a.keys() == b.keys()
    for key in a:
      assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
