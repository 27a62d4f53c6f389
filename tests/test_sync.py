"""Synchronous data parallelism is single-device training spread over devices."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, load_experiment, max_diff
from pdist import config as config_lib
from pdist import metrics, train
from pdist.parallel import buckets


def _config(strategy="single", devices=0, backend="shard_map", opt="sgd", momentum=0.0,
            batch=64, steps=20, log_every=10, accumulate=1):
  c = load_experiment("mnist1d", "tiny")
  c.strategy, c.sync.devices, c.sync.backend = strategy, devices, backend
  c.optim.name, c.optim.momentum = opt, momentum
  c.optim.learning_rate = 0.05 if opt == "sgd" else 0.003
  c.optim.accumulate_steps = accumulate
  c.data.batch_size = batch
  c.model.hidden = (64, 64)
  c.train.steps, c.train.log_every, c.train.eval_every = steps, log_every, 0
  c.train.progress = False
  return c



@pytest.mark.slow
@pytest.mark.parametrize("opt, momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)])
def test_sync_equals_single(opt, momentum):
  single = train.run(_config("single", opt=opt, momentum=momentum))
  ref = single.params
  moved = max_diff(ref, train.run(_config("single", opt=opt, momentum=momentum, steps=1)).params)
  assert moved > 1e-3  # 20 steps really move the parameters, so 1e-5 is a real bound
  for backend in ("shard_map", "pmap"):
    for devices in (8, 2):
      got = train.run(_config("sync", devices, backend, opt=opt, momentum=momentum))
      assert max_diff(ref, got.params) < 1e-5, (backend, devices)
      # the metrics mean the same: the global batch's loss and accuracy, the same epochs
      for a, b in zip(metrics.without_timing(single.rows), metrics.without_timing(got.rows)):
        # sync's rows add what it communicated (pdist/network.py), nothing else
        assert set(b) - set(a) == {"syncs", "bytes_sent", "sim_time"} and set(a) <= set(b)
        for key in a:
          assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (backend, devices, key)


def test_plain_sgd_gradient_is_not_scaled_by_device_count():
  """The trap of a gradient w.r.t. a replicated input (8x too large) shows with plain SGD."""
  ref = train.run(_config("single", steps=1)).params
  init = train.run(_config("single", steps=1, opt="sgd")).strategy.task.init(
      jax.random.PRNGKey(0))
  got = train.run(_config("sync", 8, steps=1)).params
  step_ref = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), ref, init)
  step_got = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), got, init)
  for r, g in zip(jax.tree.leaves(step_ref), jax.tree.leaves(step_got)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-7)


def test_accumulating_four_micro_batches_equals_one_batch():
  whole = train.run(_config("single", batch=256, steps=10)).params
  micro = train.run(_config("single", batch=256, steps=10, accumulate=4)).params
  assert max_diff(whole, micro) < 1e-5
  sync_micro = train.run(_config("sync", 8, batch=256, steps=10, accumulate=4)).params
  assert max_diff(whole, sync_micro) < 1e-5


def test_hundreds_of_sync_steps_on_eight_devices():
  """Blocking on each chunk keeps collectives from piling up (a sharp edge of emulated CPU devices), at any length."""
  for log_every in (1, 300):
    r = train.run(_config("sync", 8, steps=300, log_every=log_every, batch=64))
    assert r.summary["step"] == 300 and np.isfinite(r.summary["loss"])


def test_linear_scaling_rule_and_warmup():
  from pdist import optim
  c = _config(batch=256)
  c.optim.learning_rate, c.optim.base_batch_size = 0.1, 32
  c.optim.schedule, c.optim.warmup_steps = "warmup", 10
  lr = optim.schedule(c)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(100)], [0.0, 0.4, 0.8, 0.8], rtol=1e-6)


def test_sync_errors_are_clear():
  with pytest.raises(config_lib.ConfigError, match="batch_size=60 is not divisible by the 8"):
    train.run(_config("sync", 8, batch=60))
  with pytest.raises(config_lib.ConfigError, match="config.sync.devices=16 but only 8 devices"):
    train.run(_config("sync", 16))
  with pytest.raises(config_lib.ConfigError, match="per-device batch 12 is not divisible by "
                                                   "config.optim.accumulate_steps=8"):
    train.run(_config("sync", 8, batch=96, accumulate=8))
  c = _config("sync")
  c.sync.backend = "nccl"
  with pytest.raises(config_lib.ConfigError, match="config.sync.backend='nccl' is not one of"):
    train.run(c)
  c = _config("sync")
  c.sync.bucket_mb = -1.0
  with pytest.raises(config_lib.ConfigError, match="config.sync.bucket_mb must be non-negative"):
    train.run(c)


def test_bucket_plan_packs_small_leaves_in_reverse_order():
  f32, bf16 = jax.numpy.float32, jax.numpy.bfloat16
  leaves = [jax.ShapeDtypeStruct(s, d) for s, d in
            [((300,), f32), ((60,), f32), ((100,), bf16), ((4,), f32), ((200,), f32), ((1,), f32)]]
  # cap 1000 bytes: the 1200-byte leaf 0 alone; f32 leaves 5, 4, 3, 1 packed from the end until
  # the next would pass the cap (4 + 800 + 16 bytes, then 240 more: a new bucket); bf16 apart
  assert buckets.plan(leaves, 1000) == [[5, 4, 3], [2], [1], [0]]
  assert buckets.plan(leaves, 10**6) == [[5, 4, 3, 1, 0], [2]]
  assert buckets.plan(leaves, 0) == [[i] for i in range(6)]


def test_bucketed_all_reduce_is_the_per_leaf_mean_exactly():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
  spec = jax.sharding.PartitionSpec("data")
  rng = np.random.default_rng(0)
  tree = {"w": rng.normal(size=(4, 64, 33)).astype(np.float32),
          "b": rng.normal(size=(4, 33)).astype(np.float32),
          "h": rng.normal(size=(4, 7)).astype(jax.numpy.bfloat16),
          "loss": rng.normal(size=(4,)).astype(np.float32)}

  def reduce(fn):
    body = lambda t: jax.tree.map(lambda v: v[None], fn(jax.tree.map(lambda v: v[0], t)))
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec))(tree)

  want = reduce(lambda t: jax.lax.pmean(t, "data"))
  for cap in (0, 200, 2**20):  # one per leaf, several buckets, one bucket per dtype
    got = reduce(lambda t, cap=cap: buckets.pmean(t, "data", cap))
    for k in tree:
      np.testing.assert_array_equal(np.asarray(got[k], np.float32),
                                    np.asarray(want[k], np.float32), err_msg=f"{k}, cap {cap}")
  assert not np.allclose(np.asarray(want["w"][0]), tree["w"][0])  # it did average


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  return env


COMMON = ["--config", "experiments/mnist1d_sync.py:tiny,mlp", "--config.train.progress=False",
          "--config.train.save_params=True", "--config.data.batch_size=32",
          "--config.optim.name=sgd", "--config.optim.momentum=0.9",
          "--config.optim.learning_rate=0.05"]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  proc = subprocess.run([sys.executable, "-m", "pdist", *COMMON, "--workdir", one,
                         "--local_devices", "4"], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = subprocess.run([sys.executable, "-m", "pdist.launch", "--processes", "2",
                         "--devices-per-process", "2", "--timeout", "300", "--", *COMMON,
                         "--workdir", two], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=360)
  assert proc.returncode == 0, proc.stderr[-3000:]
  a, b = train.load_params(os.path.join(one, "params.npz")), \
      train.load_params(os.path.join(two, "params.npz"))
  assert a.keys() == b.keys() and len(a) > 0
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0)
  rows = metrics.read(two)  # only process 0 wrote: one row per logged step
  assert [r["step"] for r in rows] == [10, 20, 30, 40]
  assert json.load(open(os.path.join(two, "summary.json")))["strategy"] == "sync"


@pytest.mark.slow
def test_unreachable_coordinator_is_a_clear_error(tmp_path):
  import socket
  with socket.socket() as s:  # a port that nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.run(
      [sys.executable, "-m", "pdist", *COMMON, "--workdir", str(tmp_path),
       "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", "1",
       "--init_timeout", "2"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 4
  assert f"could not reach the coordinator at 127.0.0.1:{port} within 2 s" in proc.stderr
  assert "Traceback" not in proc.stderr
