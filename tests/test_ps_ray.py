"""The parameter server on real processes (config.ps.backend='ray'): equivalences, faults, the
trace and its bit-for-bit replay, loopback-only sockets, bad input."""

import ipaddress
import json
import os

import jax
import psutil
import pytest

from conftest import assert_one_clear_line, max_diff, quiet_experiment
from pdist import replay, strategies, tasks, train
from pdist.data import load as load_data

# Ray clusters: one xdist worker runs these files, one after another (make test: -n 2)
pytestmark = pytest.mark.xdist_group("ray")


COMMON = dict(optim__momentum=0.9, data__batch_size=16, train__log_every=10, train__eval_every=0,
              train__save_params=False)


def _config(steps=40, **fields):
  """experiments/ps_ray.py:tiny (backend ray) with momentum, `steps` updates and `fields`."""
  return quiet_experiment("ps_ray", "tiny", train__steps=steps, **{**COMMON, **fields})


def _listening(root: psutil.Process) -> list:
  """Addresses that `root` and its descendants listen on."""
  out = []
  for p in [root] + root.children(recursive=True):
    try:
      out += [c.laddr for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
      pass
  return out


def _loopback(ip: str) -> bool:
  a = ipaddress.ip_address(ip)
  return a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None
                           and a.ipv4_mapped.is_loopback)


@pytest.mark.slow
def test_one_real_worker_equals_single_and_listens_on_loopback_only():
  c = _config(ps__workers=1)
  task = tasks.build(c, load_data(c.data))
  strategy = strategies.build(c, task)
  try:
    state = strategy.init(jax.random.PRNGKey(c.train.seed))
    state, first = strategy.run(state, 20)
    listening = _listening(psutil.Process())
    assert listening and all(_loopback(a.ip) for a in listening), listening
    state, second = strategy.run(state, 20)
  finally:
    strategy.close()
  single = train.run(_config(strategy="single", train__log_every=20))
  assert max_diff(single.params, strategy.params(state)) < 1e-5
  assert second["loss"] == pytest.approx(single.rows[-1]["loss"], rel=1e-5)
  assert first["staleness_max"] == 0 and second["updates"] == 40
  assert not psutil.Process().children(recursive=True)  # close() left nothing running


@pytest.mark.slow
def test_killed_worker_rejoins_and_the_trace_replays_bit_for_bit(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  c = _config(steps=300, ps__workers=3, ps__consistency="ssp", ps__max_staleness=2,
              ps__staleness_lr="inverse", ps__failures__at=((0.3, 1),),
              train__save_params=True)
  result = train.run(c, workdir)
  assert result.summary["crashes"] >= 1 and result.summary["updates"] == 300  # it went on
  with open(os.path.join(workdir, "trace.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["worker"] for r in records if r["op"] == "kill"] == [1]
  pulls, applied, lost = set(), [], set()
  for r in records:  # every applied gradient was pulled once and is applied once
    if r["op"] == "pull":
      pulls.add((r["worker"], r["iteration"]))
    elif r["op"] == "apply":
      assert (r["worker"], r["iteration"]) in pulls
      applied.append((r["worker"], r["iteration"]))
    elif r["op"] == "lost":  # killed in flight (else its next call waited for the restart)
      lost.add((r["worker"], r["iteration"]))
  assert len(applied) == len(set(applied)) == 300 and not lost & set(applied)
  assert max(row["clock_gap_max"] for row in result.rows) <= 2  # ssp's bound held
  capsys.readouterr()
  assert replay.main([workdir]) == 0
  out = capsys.readouterr().out
  assert "bit for bit" in out and "total variation distance" in out
  assert os.path.exists(os.path.join(workdir, "staleness_real_vs_emulator.png"))


@pytest.mark.slow
def test_real_bsp_equals_the_emulator_and_resumes_as_its_replay(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  fields = dict(ps__workers=3, ps__consistency="bsp", train__save_params=True,
                checkpoint__every=10, ps__ray_shared_memory=False)  # as on a cluster
  train.run(_config(steps=20, **fields), workdir)          # then resumed to 30
  real = train.run(_config(steps=30, **fields), workdir)
  assert real.summary["resumed_from"] == 20
  emulated = train.run(_config(steps=30, ps__backend="emulator", ps__workers=3,
                               ps__consistency="bsp"))
  assert max_diff(emulated.params, real.params) < 1e-5
  capsys.readouterr()
  assert replay.main([workdir]) == 0
  assert "1 resumes" in capsys.readouterr().out


@pytest.mark.parametrize("fields, message", [
    (["--config.ps.ray_address=127.0.0.1:1"], "is not a reachable Ray cluster"),
    (["--config.compression.name=topk"], "uncompressed, non-private gradients only"),
    (["--config.ps.failures.rate=0.1"], "config.ps.failures.at=((seconds, worker), ...)"),
    (["--config.ps.ray_worker_gpus=-1"], "config.ps.ray_worker_gpus must be >= 0"),
    (["--config.ps.ray_worker_gpus=1000"], "needs 4000 GPUs but the Ray cluster has"),  # placed?
])
def test_ray_backend_config_errors(fields, message, tmp_path, capsys):
  assert_one_clear_line("mnist1d.py:tiny", ["--config.strategy=ps", "--config.ps.backend=ray",
                                            *fields], message, tmp_path / "w", capsys)


def test_ray_address_without_ray_is_refused(tmp_path, capsys):
  assert_one_clear_line("mnist1d.py:tiny", ["--config.strategy=ps", "--config.ps.ray_address=auto"],
                        "only applies to config.ps.backend='ray'", tmp_path / "w", capsys)


def test_a_worker_partition_too_small_is_refused_before_ray_starts(tmp_path, capsys,
                                                                  monkeypatch):
  """64 workers share the tiny preset's 512 examples, 8 each, under batches of 32: every worker
  process would refuse its sampler once Ray and the actors are up (exit 3 after minutes); the
  driver refuses it first, with the emulator's sentence."""
  from pdist.strategies.ps_ray import server

  def never(*args, **kwargs):
    raise AssertionError("Ray was started")
  monkeypatch.setattr(server, "start_ray", never)
  assert_one_clear_line("ps_ray.py:tiny", ["--config.ps.workers=64"],
                        "config.data.batch_size=32 per worker does not fit: a worker's data has "
                        "8 examples (config.data.partition='iid', 64 workers)", tmp_path / "w",
                        capsys)


def test_scripted_kills_the_run_did_not_reach_are_said(capsys):
  """Kills of config.ps.failures.at still ahead when the run ends go into summary.json (in
  seconds of training, as written) and a warning; a resumed run's past ones do not."""
  c = _config(ps__failures__at=((0.5, 0), (2.5, 1)))
  strategy = strategies.build(c, tasks.build(c, load_data(c.data)))   # Ray is not started
  assert strategy.describe(None)["scripted_failures_not_reached"] == [[0.5, 0], [2.5, 1]]
  strategy.load_host_state({**strategy.host_state(), "trained_seconds": 1.0})   # resumed at 1 s
  assert strategy.describe(None)["scripted_failures_not_reached"] == [[2.5, 1]]
  strategy.check_finished(None)
  assert ("the run ended after 1.00 s of training, before config.ps.failures.at's (time 2.5, "
          "worker 1), which therefore never happened") in capsys.readouterr().err
  strategy.load_host_state({**strategy.host_state(), "trained_seconds": 3.0})
  assert "scripted_failures_not_reached" not in strategy.describe(None)


def test_a_resumed_run_keeps_only_the_kills_still_ahead():
  from pdist.strategies.ps_ray import kill_schedule
  at = ((2.5, 1), (0.5, 0), (4.0, 2))
  assert kill_schedule(at, 0.0) == [(0.5, 0), (2.5, 1), (4.0, 2)]
  assert kill_schedule(at, 1.0) == [(1.5, 1), (3.0, 2)]   # 0.5 happened before the checkpoint
  assert kill_schedule(at, 5.0) == []


def test_the_shared_rows_are_private():
  """On one machine the parameters and gradients go through files under /dev/shm: readable and
  writable by the run's user only, whatever the umask."""
  import stat
  from pdist.strategies.ps_ray import Slots
  slots = Slots(2, 8, "float32")
  try:
    for name in ("-params", "-grads"):
      assert stat.S_IMODE(os.stat(slots.prefix + name).st_mode) == 0o600
    slots.params[1] = 3.0
    assert Slots(*slots.spec()[:3], prefix=slots.prefix).params[1, 0] == 3.0   # a worker's view
  finally:
    slots.unlink()
