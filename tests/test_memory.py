"""pdist/memory.py: a run whose state cannot fit is refused in one sentence before anything is
built; XLA's own RESOURCE_EXHAUSTED becomes one sentence; many seeds' set-up says where it is."""

import os

import jax
import numpy as np
import pytest

from conftest import EXPERIMENTS, quiet_experiment
from pdist import data, memory, strategies, tasks
from pdist.__main__ import main
from pdist.registry import ConfigError
from pdist.strategies import seeds as seeds_lib

# experiments/mnist1d.py:tiny by hand: an MLP 40 -> 256 -> 256 -> 10 in float32, adam (count and
# mu, nu) with a constant schedule (its own count), 400 training signals of 40 float32 + int32
PARAMS = 4 * (40 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10)   # 315,432
ADAM = 2 * PARAMS + 4 + 4
DATA = 400 * 40 * 4 + 400 * 4                                      # 65,600
ONE = PARAMS + ADAM + PARAMS                                       # params, adam, gradients


def _estimate(**fields):
  c = quiet_experiment("mnist1d", "tiny", **fields)
  return memory.estimate(c, tasks.build(c, data.load(c.data)))


@pytest.mark.parametrize("fields, total", [
    ({}, ONE + DATA),
    ({"train__seeds": 5}, 5 * ONE + DATA),
    # codistill: each replica also keeps the stale copy the others distil from
    ({"strategy": "codistill", "codistill__replicas": 3}, 3 * (ONE + PARAMS) + DATA),
    # the emulated server: its state plus one in-flight gradient slot per worker
    ({"strategy": "ps", "ps__workers": 6}, ONE + DATA + 6 * PARAMS),
    ({"strategy": "ps", "ps__workers": 6, "ps__consistency": "bsp"}, ONE + DATA),
    # eight emulated CPU devices share this host's memory: a copy of everything on each
    ({"strategy": "sync"}, 8 * (ONE + DATA)),
], ids=["single", "seeds", "codistill", "ps", "ps_bsp", "sync"])
def test_the_estimate_is_the_hand_count(fields, total):
  est = _estimate(**fields)
  assert (est.parameters, est.optimizer, est.gradients, est.data) == (PARAMS, ADAM, PARAMS, DATA)
  assert est.total == total


# ZeRO-3 on fsdp 8: every leaf split in 8 but the 10-wide output bias (8 does not divide it)
P8 = (PARAMS - 4 * 10) // 8 + 4 * 10
ONE_ZERO3 = P8 + (2 * P8 + 4 + 4) + P8


def test_a_sharded_mesh_is_estimated_per_device_and_fits_where_replicas_do_not(monkeypatch):
  """sync on fsdp 8 with ZeRO-3: each of the host's 8 devices holds an eighth of the state (by
  hand above) and its own copy of the data; with memory for that but not for 8 replicas, the
  sharded run passes the check and data parallelism is refused."""
  zero3 = dict(strategy="sync", sync__mesh__data=1, sync__mesh__fsdp=8, sync__zero=3)
  est = _estimate(**zero3)
  assert est.total == 8 * (ONE_ZERO3 + DATA)
  c = quiet_experiment("mnist1d", "tiny", **zero3)
  task = tasks.build(c, data.load(c.data))
  free = 8 * (ONE + DATA) - 1
  monkeypatch.setattr(memory, "available_bytes", lambda: (free, "this host's memory"))
  memory.check(c, task)
  plain = quiet_experiment("mnist1d", "tiny", strategy="sync")
  with pytest.raises(ConfigError, match="config.sync.devices=8"):
    memory.check(plain, tasks.build(plain, data.load(plain.data)))


def test_a_pipeline_is_estimated_with_its_stages():
  """pipeline 4 x data 2 on an MLP of five 256-wide hidden layers: a device holds a quarter of
  the four stacked 256 x 256 blocks and the rest whole."""
  c = quiet_experiment("mnist1d", "tiny", strategy="sync", sync__mesh__pipeline=4,
                       model__hidden=(256,) * 5)
  est = memory.estimate(c, tasks.build(c, data.load(c.data)))
  blocks = 4 * 4 * (256 * 256 + 256)
  rest = 4 * (40 * 256 + 256 + 256 * 10 + 10)
  assert est.parameters == rest + blocks // 4 == est.gradients
  assert est.total == 8 * (4 * est.parameters + 8 + DATA)   # params, Adam mu, nu (+ counts), grads


def _refused(args, capsys, monkeypatch, workdir):
  """Exit status and stderr of `python -m pdist` on mnist1d.py:tiny with `args`; building a
  strategy fails the test (the refusal must come before)."""
  def never(*a, **k):
    raise AssertionError("a strategy was built")
  monkeypatch.setattr(strategies, "build", never)
  code = main(["--config", os.path.join(EXPERIMENTS, "mnist1d.py:tiny"), "--workdir",
               str(workdir), *args])
  err = capsys.readouterr().err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
  return code, err


def test_too_many_seeds_are_refused_before_building_with_how_many_fit(tmp_path, capsys,
                                                                      monkeypatch):
  free = 10 * 10**9
  monkeypatch.setattr(memory, "available_bytes", lambda: (free, "this host's memory"))
  code, err = _refused(["--config.train.seeds=100000"], capsys, monkeypatch, tmp_path / "w")
  assert code == 2
  assert f"needs at least {100000 * ONE + DATA:,} bytes" in err
  assert f"but {free:,} bytes" in err
  assert f"at most {(free - DATA) // ONE} fit, so lower config.train.seeds" in err


def test_a_model_too_large_for_any_machine_is_refused_before_building(tmp_path, capsys,
                                                                      monkeypatch):
  width = 100_000_000
  params = 4 * (40 * width + width + width * width + width + width * 10 + 10)
  code, err = _refused([f"--config.model.hidden=({width},{width})"], capsys, monkeypatch,
                       tmp_path / "w")
  assert code == 2
  assert f"needs at least {params + (2 * params + 8) + params + DATA:,} bytes" in err
  assert f"config.model.hidden=({width}, {width})" in err


def test_xla_out_of_memory_is_one_sentence(tmp_path, capsys, monkeypatch):
  # the check believes anything fits; XLA then cannot allocate the 1.6 PB kernel (more than any
  # address space, so it fails at once on every machine)
  monkeypatch.setattr(memory, "available_bytes", lambda: (10**30, "everywhere"))
  code = main(["--config", os.path.join(EXPERIMENTS, "mnist1d.py:tiny"), "--workdir",
               str(tmp_path / "w"), "--config.model.hidden=(20000000,20000000)"])
  err = capsys.readouterr().err
  assert code == 3 and "XLA ran out of memory" in err and "RESOURCE_EXHAUSTED" in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_many_seeds_say_where_their_set_up_is_and_start_as_their_own_runs(capsys, monkeypatch):
  monkeypatch.setattr(seeds_lib, "PROGRESS_SECONDS", 0.0)   # a line after every seed
  c = quiet_experiment("mnist1d", "tiny", train__seeds=3)
  strategy = strategies.build(c, tasks.build(c, data.load(c.data)))
  state = strategy.init(jax.random.PRNGKey(0))
  lines = capsys.readouterr().err.strip().splitlines()
  assert [ln.split(" seeds built")[0] for ln in lines] == [
      f"pdist: initial states of {i} of 3" for i in (1, 2, 3)]
  for i, seed in enumerate(strategy.seeds()):   # written in place: each seed's own state
    own = strategy.inner.initial_state(jax.random.PRNGKey(seed))
    for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(state)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[i])
