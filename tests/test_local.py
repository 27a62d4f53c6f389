"""Local SGD, DiLoCo, streaming fragments and gossip, against sync and hand-written references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_experiment, max_diff, set_fields, switch_strategy
from pdist import config as config_lib
from pdist import train
from pdist.registry import ConfigError
from pdist.strategies import base
from pdist.strategies.gossip import in_neighbours, mixing_matrix
from pdist.strategies.local import split_fragments


def _config(strategy, steps=20, lr=0.05, momentum=0.0, hidden=(64, 64), **fields):
  c = load_experiment("mnist1d", "tiny")
  switch_strategy(c, strategy)
  c.optim.name, c.optim.learning_rate, c.optim.momentum = "sgd", lr, momentum
  c.data.batch_size = 64
  c.model.hidden = hidden
  c.train.steps, c.train.log_every, c.train.eval_every = steps, 10, 0
  c.train.progress, c.train.tensorboard = False, False
  set_fields(c, **fields)
  config_lib.validate(c)
  return c


def _rows_match(a_rows, b_rows, keys=("loss", "accuracy")):
  for a, b in zip(a_rows, b_rows):
    for k in keys:
      assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-7), k


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [pytest.param(0.0, marks=pytest.mark.long), 0.9])
def test_one_inner_step_of_plain_averaging_is_sync(momentum):
  """H = 1, outer SGD lr 1 without momentum: theta - mean_i(theta - theta_i) = sync's update
  (with inner momentum too: the mean of the replicas' momenta is sync's momentum)."""
  ref = train.run(_config("sync", momentum=momentum))
  assert max_diff(ref.params, train.run(_config("sync", steps=1, momentum=momentum)).params) > 1e-3
  for devices in (8, 2):
    got = train.run(_config("local", momentum=momentum, local__inner_steps=1,
                            sync__devices=devices))
    ref_d = ref if devices == 8 else train.run(_config("sync", momentum=momentum,
                                                         sync__devices=2))
    assert max_diff(ref_d.params, got.params) < 1e-5, devices
    _rows_match(ref_d.rows, got.rows)
    assert got.rows[-1]["consensus"] < 1e-5   # every replica holds theta after each sync


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gossip_on_the_complete_graph_is_sync(momentum):
  ref = train.run(_config("sync", momentum=momentum))
  got = train.run(_config("gossip", momentum=momentum, gossip__topology="complete"))
  assert max_diff(ref.params, got.params) < 1e-5
  _rows_match(ref.rows, got.rows)


def _reference_local(c, strategy, steps):
  """Hand-written local SGD: replicas, inner momentum SGD, warmup, staggered fragments and an
  outer Nesterov step, in numpy; the task's gradient is the only shared piece."""
  task, R = strategy.task, strategy.num_devices
  L = c.local
  H, W, frags = L.inner_steps, L.sync_warmup, strategy.groups
  lr, mu = c.optim.learning_rate, c.optim.momentum
  olr, omu = L.outer_learning_rate, L.outer_momentum
  init_key, step_key = base.init_keys(jax.random.PRNGKey(c.train.seed))
  tree = jax.tree.structure(task.init(init_key))
  theta = [np.asarray(x, np.float64) for x in jax.tree.leaves(task.init(init_key))]
  reps = [[x.copy() for x in theta] for _ in range(R)]
  mom = [[np.zeros_like(x) for x in theta] for _ in range(R)]
  outer = [np.zeros_like(x) for x in theta]
  grad = jax.jit(jax.grad(lambda p, b, r: task.loss(p, b, r)[0]))
  x, y = task.dataset.x_train, task.dataset.y_train
  for s in range(steps):
    idx = np.asarray(strategy.indices(s, 1))[0].reshape(R, -1)
    rng = jax.random.fold_in(step_key, s)
    g = []
    for i in range(R):
      p = jax.tree.unflatten(tree, [jnp.asarray(v, jnp.float32) for v in reps[i]])
      gi = grad(p, {"x": x[idx[i]], "y": y[idx[i]]}, rng)
      g.append([np.asarray(v, np.float64) for v in jax.tree.leaves(gi)])
    if s < W:   # synchronous warmup: the mean gradient everywhere
      g = [[np.mean([g[i][l] for i in range(R)], axis=0) for l in range(len(theta))]] * R
    for i in range(R):
      for l in range(len(theta)):
        mom[i][l] = mu * mom[i][l] + g[i][l]
        reps[i][l] = reps[i][l] - lr * mom[i][l]
    if s + 1 == W:
      theta = [v.copy() for v in reps[0]]
    k = s + 1 - W
    for p, leaves in enumerate(frags):
      if k > 0 and k % H == p * H // len(frags):
        for l in leaves:
          delta = np.mean([theta[l] - reps[i][l] for i in range(R)], axis=0)
          outer[l] = omu * outer[l] + delta
          theta[l] = theta[l] - olr * (omu * outer[l] + delta)   # Nesterov
          for i in range(R):
            reps[i][l] = theta[l].copy()
  return jax.tree.unflatten(tree, theta), reps


@pytest.mark.slow
def test_diloco_with_warmup_and_streaming_fragments_matches_a_hand_written_reference():
  fields = dict(local__inner_steps=4, local__sync_warmup=3, local__fragments=2,
                local__outer_learning_rate=0.7, local__outer_momentum=0.9,
                local__outer_nesterov=True, sync__devices=4)
  c = _config("local", steps=23, lr=0.05, momentum=0.5, hidden=(16, 16), **fields)
  got = train.run(c)
  assert len(got.strategy.groups) == 2
  theta, reps = _reference_local(c, got.strategy, 23)
  assert max_diff(theta, got.params) < 2e-5
  # the replicas too, and the consensus distance of the last row from them
  state_reps = got.state["replicas"]["params"]
  for i in range(4):
    mine = jax.tree.map(lambda a: np.asarray(a)[i], state_reps)
    assert max(float(np.max(np.abs(np.asarray(a) - b)))
               for a, b in zip(jax.tree.leaves(mine), reps[i])) < 2e-5
  mean = [np.mean([r[l] for r in reps], axis=0) for l in range(len(reps[0]))]
  consensus = np.mean([np.sqrt(sum(np.sum((r[l] - mean[l]) ** 2) for l in range(len(mean))))
                       for r in reps])
  assert consensus > 1e-3
  assert got.rows[-1]["consensus"] == pytest.approx(consensus, rel=1e-4)
  # communication: warmup 3 syncs; local steps k = 1..20: fragment 0 at k = 4, 8, 12, 16, 20,
  # fragment 1 (offset H/2 = 2) at k = 2, 6, 10, 14, 18: ten half-model syncs = 5 whole
  assert got.rows[-1]["syncs"] == 3 + 5
  assert got.rows[0]["syncs"] == 3 + (1 + 2) / 2   # step 10: k = 1..7: 4; 2 and 6


def test_streaming_fragments_are_contiguous_and_balanced():
  shapes = [(10,), (40, 10), (10,), (10, 10), (3,), (10, 3)]   # sizes 10 400 10 100 3 30
  assert split_fragments(shapes, 1) == [[0, 1, 2, 3, 4, 5]]
  assert split_fragments(shapes, 2) == [[0, 1], [2, 3, 4, 5]]   # 410 | 143: 400 cannot split
  assert split_fragments([(5,)] * 6, 3) == [[0, 1], [2, 3], [4, 5]]
  with pytest.raises(ConfigError, match="fragments=7 but the model has 6 parameter arrays"):
    split_fragments(shapes, 7)


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["ring", "exponential"])
def test_gossip_matches_the_mixing_matrix_reference(topology):
  """The replicas of a run against numpy's W @ (x - lr g), W written by hand: the ring's
  (symmetric) and the directed exponential graph's, whose direction a reversed permute breaks."""
  c = _config("gossip", steps=12, hidden=(16, 16), gossip__topology=topology)
  got = train.run(c)
  strategy, R = got.strategy, 8
  task = strategy.task
  init_key, step_key = base.init_keys(jax.random.PRNGKey(0))
  tree = jax.tree.structure(task.init(init_key))
  reps = np.stack([np.concatenate([np.ravel(v) for v in jax.tree.leaves(task.init(init_key))])
                   ] * R).astype(np.float64)
  sizes = [v.size for v in jax.tree.leaves(task.init(init_key))]
  shapes = [v.shape for v in jax.tree.leaves(task.init(init_key))]

  def unflat(v):
    out, at = [], 0
    for n, s in zip(sizes, shapes):
      out.append(jnp.asarray(v[at:at + n].reshape(s), jnp.float32))
      at += n
    return jax.tree.unflatten(tree, out)

  w = np.zeros((R, R))
  for i in range(R):
    if topology == "ring":   # 1/3 on the diagonal and both neighbours
      w[i, [i, (i - 1) % R, (i + 1) % R]] = 1 / 3
    else:                    # i <- i - 1, i - 2, i - 4 (mod 8) and itself: 1/4 each
      w[i, [i, (i - 1) % R, (i - 2) % R, (i - 4) % R]] = 1 / 4
  grad = jax.jit(jax.grad(lambda p, b, r: task.loss(p, b, r)[0]))
  x, y = task.dataset.x_train, task.dataset.y_train
  for s in range(12):
    idx = np.asarray(strategy.indices(s, 1))[0].reshape(R, -1)
    rng = jax.random.fold_in(step_key, s)
    g = np.stack([np.concatenate([np.ravel(v) for v in jax.tree.leaves(
        grad(unflat(reps[i]), {"x": x[idx[i]], "y": y[idx[i]]}, rng))]) for i in range(R)])
    reps = w @ (reps - c.optim.learning_rate * g)
  mean = reps.mean(axis=0)
  got_mean = np.concatenate([np.ravel(v) for v in jax.tree.leaves(got.params)])
  np.testing.assert_allclose(got_mean, mean, atol=2e-5)
  consensus = np.mean(np.linalg.norm(reps - mean, axis=1))
  assert consensus > 1e-3
  assert got.rows[-1]["consensus"] == pytest.approx(consensus, rel=1e-3)


def test_topologies_are_the_documented_graphs():
  assert in_neighbours("ring", 8)[0] == [7, 1]
  assert in_neighbours("ring", 2) == [[1], [0]]
  assert sorted(in_neighbours("exponential", 8)[0]) == [4, 6, 7]   # 0 - 1, 0 - 2, 0 - 4
  assert sorted(in_neighbours("exponential", 6)[5]) == [1, 3, 4]   # 5 - 1, 5 - 2, 5 - 4
  assert sorted(in_neighbours("torus", 8)[0]) == [1, 3, 4]         # 2 x 4: up = down
  assert sorted(in_neighbours("torus", 9)[4]) == [1, 3, 5, 7]      # 3 x 3: the centre
  for topology in ("ring", "torus", "exponential", "complete"):
    for n in range(2, 10):
      w = mixing_matrix(topology, n)
      np.testing.assert_allclose(w.sum(axis=1), 1)
      np.testing.assert_allclose(w.sum(axis=0), 1)   # doubly stochastic: the mean is kept
  np.testing.assert_allclose(mixing_matrix("complete", 4), np.full((4, 4), 0.25))


@pytest.mark.slow
def test_resume_mid_round_is_bit_for_bit(tmp_path):
  """Stopped mid-round (fragment phase, inner and outer state, warmup done), resumed exactly."""
  fields = dict(local__inner_steps=4, local__sync_warmup=2, local__fragments=2,
                local__outer_learning_rate=0.7, local__outer_momentum=0.9,
                local__outer_nesterov=True, sync__devices=4)
  for strategy, extra in (("local", fields), ("gossip", {"gossip__topology": "exponential"})):
    ref = train.run(_config(strategy, steps=20, hidden=(16, 16), **extra))
    work = str(tmp_path / strategy)
    train.run(_config(strategy, steps=13, hidden=(16, 16), **extra), work)
    resumed = train.run(_config(strategy, steps=20, hidden=(16, 16), **extra), work)
    assert resumed.summary["resumed_from"] == 13
    for a, b in zip(jax.tree.leaves(ref.state), jax.tree.leaves(resumed.state)):
      assert np.array_equal(np.asarray(a), np.asarray(b)), strategy


def test_simulated_time_is_the_network_model_in_closed_form():
  net = dict(network__latency=0.01, network__bandwidth=1e6, sync__compute_time=0.5)
  sync = train.run(_config("sync", steps=10, hidden=(16, 16), **net))
  params = sum(v.size for v in jax.tree.leaves(sync.params))
  nbytes = 4 * params
  ring = 2 * 7 * (0.01 + nbytes / 8 / 1e6)           # ring all-reduce over 8 devices
  assert sync.rows[-1]["sim_time"] == pytest.approx(10 * (0.5 + ring))
  assert sync.rows[-1]["bytes_sent"] == pytest.approx(10 * 2 * 7 / 8 * nbytes)   # ring: 2(N-1)/N
  local = train.run(_config("local", steps=10, hidden=(16, 16), local__inner_steps=4, **net))
  assert local.rows[-1]["syncs"] == 2                 # after updates 4 and 8
  assert local.rows[-1]["sim_time"] == pytest.approx(10 * 0.5 + 2 * ring)
  assert local.rows[-1]["bytes_sent"] == pytest.approx(2 * 2 * 7 / 8 * nbytes)
  # streaming: 2 fragments after a warm-up of 2, each fragment's all-reduce at its own offset
  frag = train.run(_config("local", steps=10, hidden=(16, 16), local__inner_steps=4,
                           local__fragments=2, local__sync_warmup=2, **net))
  leaves = jax.tree.leaves(frag.params)
  fb = [4 * sum(leaves[i].size for i in g) for g in split_fragments([x.shape for x in leaves], 2)]
  # warm-up: 2 dense all-reduces; then 8 local steps: fragment 0 due at local steps 4, 8,
  # fragment 1 (offset 2) at 2, 6
  expect = 10 * 0.5 + 2 * ring + sum(2 * 2 * 7 * (0.01 + b / 8 / 1e6) for b in fb)
  assert frag.rows[-1]["sim_time"] == pytest.approx(expect)
  gossip = train.run(_config("gossip", steps=10, hidden=(16, 16), **net))
  assert gossip.rows[-1]["sim_time"] == pytest.approx(10 * (0.5 + 2 * (0.01 + nbytes / 1e6)))
  assert gossip.rows[-1]["bytes_sent"] == 10 * 2 * nbytes


@pytest.mark.parametrize("strategy, fields, message", [
    ("local", {"sync__backend": "pmap"}, "runs on shard_map only"),
    ("local", {"sync__devices": 1}, "keeps one replica per device and the mesh has 1"),
    ("local", {"local__fragments": 9}, "is more than config.local.inner_steps=8"),
    ("local", {"local__outer_nesterov": True}, "needs config.local.outer_momentum > 0"),
    ("local", {"local__outer_optimizer": "adam", "local__outer_momentum": 0.9},
     "apply to the outer 'sgd' only"),
    ("local", {"privacy__mechanism": "dpsgd"}, "does not combine with config.privacy"),
    ("gossip", {"compression__name": "topk"}, "does not combine with config.compression"),
    ("gossip", {"gossip__topology": "star"}, "is not one of: ring, torus, exponential, complete"),
])
def test_combinations_that_cannot_work_are_one_sentence(strategy, fields, message):
  with pytest.raises(ConfigError, match=message):
    c = _config(strategy, **fields)
    train.run(c)


TWO_PROCESSES = {
    "local": ["--config", "experiments/local_sgd.py:tiny,diloco", "--config.local.inner_steps=4",
              "--config.local.fragments=2", "--config.local.sync_warmup=2"],
    "gossip": ["--config", "experiments/gossip.py:tiny,ring"],
}


@pytest.mark.slow
@pytest.mark.long   # 25 s each; several processes are in make test through tests/test_sync.py
@pytest.mark.parametrize("strategy", ["local", "gossip"])
def test_two_processes_equal_one_process(strategy, tmp_path):
  """The replicas of 2 processes x 2 devices (collectives over gloo on loopback) are those of
  one process with 4 devices."""
  import os

  from conftest import run_one_and_two_processes
  from pdist import metrics
  args = TWO_PROCESSES[strategy] + ["--config.train.progress=False",
                                    "--config.train.save_params=True"]
  one, two = run_one_and_two_processes(args, tmp_path, devices_per_process=2)
  a, b = train.load_params(os.path.join(one, "params.npz")), \
      train.load_params(os.path.join(two, "params.npz"))
  assert a.keys() == b.keys() and len(a) > 0
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0)
  rows_one, rows_two = metrics.read(one), metrics.read(two)
  assert [r["step"] for r in rows_two] == [8, 16, 24]
  for r1, r2 in zip(rows_one, rows_two):
    assert r2["syncs"] == r1["syncs"] and r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
    assert r2["consensus"] == pytest.approx(r1["consensus"], rel=1e-4, abs=1e-6)


def test_compressed_outer_gradients():
  """Top-k keeping every value (ratio 1) is the uncompressed run; at ratio 0.1 with error feedback
  the parameters differ, and each sync all-gathers every replica's payload of k values with their
  int32 indices: (N-1) messages of 8k bytes, priced in closed form."""
  net = dict(network__latency=0.01, network__bandwidth=1e6, sync__compute_time=0.5)
  base_fields = dict(steps=8, hidden=(16, 16), local__inner_steps=4, **net)
  plain = train.run(_config("local", **base_fields))
  whole = train.run(_config("local", compression__name="topk", compression__ratio=1.0,
                            **base_fields))
  np.testing.assert_allclose(
      np.concatenate([np.ravel(v) for v in jax.tree.leaves(whole.params)]),
      np.concatenate([np.ravel(v) for v in jax.tree.leaves(plain.params)]), atol=1e-6)
  tenth = train.run(_config("local", compression__name="topk", compression__ratio=0.1,
                            compression__error_feedback=True, **base_fields))
  n = sum(v.size for v in jax.tree.leaves(tenth.params))
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(tenth.params), jax.tree.leaves(plain.params))) > 1e-4
  k = max(1, round(0.1 * n))
  gather = 7 * (0.01 + 8 * k / 1e6)     # ring all-gather of 8 payloads of 8k bytes
  assert tenth.rows[-1]["sim_time"] == pytest.approx(8 * 0.5 + 2 * gather)
  assert tenth.rows[-1]["bytes_sent"] == pytest.approx(2 * 7 * 8 * k)
