"""python -m pdist.replay WORKDIR: a real parameter-server run, recomputed from its trace.

A run with config.ps.backend='ray' writes WORKDIR/trace.jsonl: every pull (worker, iteration),
every applied gradient (worker, staleness, scale) or bsp round (workers), every lost gradient and
every (re)start of the workers. Nothing in the math depends on anything else, so replaying the
records in order — a pull computes that worker's gradient at the server's current parameters,
an apply pushes it — in one process, with the same compiled programs as the run's workers and
server, gives the run's parameters bit for bit. The replay then asks the emulator what it would
have predicted: a simulator whose compute times and latency are fitted to those the run
measured, for as many updates, and compares the staleness distributions (total variation
distance, and a figure WORKDIR/staleness_real_vs_emulator.png).

Exit status: 0 when the replayed parameters equal the run's params.npz bit for bit, 1 when they
differ, 2 for a workdir that cannot be replayed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import ml_collections
import numpy as np

from pdist.registry import ConfigError

USAGE = "python -m pdist.replay WORKDIR [--no-compare]"


def read_trace(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "trace.jsonl")
  if not os.path.exists(path):
    raise ConfigError(f"'{workdir}' has no trace.jsonl: only runs with "
                      "--config.ps.backend=ray write one")
  try:
    with open(path) as f:
      return [json.loads(line) for line in f if line.strip()]
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is damaged (line {e.lineno}: {e.msg})") from None


def replay(workdir: str):
  """(config, final parameters, records) of the run in `workdir`, recomputed from its trace."""
  from pdist import artifacts, data, tasks
  from pdist.ps import server as server_lib
  from pdist.strategies.ps_ray import RayParameterServer, workers_of
  config = artifacts.load_config(workdir)
  if config.strategy != "ps" or config.ps.backend != "ray":
    raise ConfigError(f"'{workdir}' is not a run of --config.strategy=ps "
                      "--config.ps.backend=ray; nothing to replay")
  records = read_trace(workdir)
  config.ps.ray_address = ""                            # the replay needs no cluster
  dataset = data.load(config.data)
  teacher = artifacts.load_teacher(config, dataset) if config.distill.teacher else None
  task = tasks.build(config, dataset, teacher)
  strategy = RayParameterServer(config, task)          # its server; no Ray is started
  strategy._load(strategy.init(jax.random.PRNGKey(config.train.seed)))
  server = strategy.server
  workers = workers_of(config, task, range(config.ps.workers))
  pending: dict[int, tuple] = {}
  try:
    _replay_records(records, server, workers, pending, server_lib)
  except (KeyError, TypeError) as e:
    raise ConfigError(f"{os.path.join(workdir, 'trace.jsonl')} is damaged: an update without "
                      f"its pull, or a record without a field ({e!r})") from None
  return config, server.params, records


def _replay_records(records, server, workers, pending, server_lib) -> None:
  for rec in records:
    op = rec["op"]
    if op == "start":          # the workers (re)started: nothing in flight survives
      pending.clear()
    elif op == "pull":
      w = rec["worker"]
      pending[w] = (workers[w].compute(server.params, rec["iteration"]),
                    dict(enumerate(server.versions)))
    elif op == "apply":
      grads, versions = pending.pop(rec["worker"])
      server.push(rec["worker"], grads, versions)
    elif op == "round":
      mean = server_lib.average([pending.pop(w)[0] for w in rec["workers"]])
      server.push(-1, mean, dict(enumerate(server.versions)))


def staleness_of(records: list[dict], steady: bool = True) -> np.ndarray:
  """The applied gradients' staleness; `steady`: only once every worker has delivered a
  gradient since the workers last started (before that, workers still starting up — seconds
  each on a busy machine — leave fewer in the race and their own first gradients very stale)."""
  workers = next((r["workers"] for r in records if r["op"] == "start"), 0)
  out, seen = [], set()
  for r in records:
    if r["op"] == "start":
      seen = set()
    elif r["op"] == "apply":
      if not steady or len(seen) == workers:
        out.append(r["staleness"])
      seen.add(r["worker"])
  return np.asarray(out, np.int64)


def emulated_staleness(config, records: list[dict]) -> tuple[np.ndarray, dict]:
  """The staleness the emulator predicts for this run's measured timing: compute times as a
  lognormal with the measured mean and spread of log-time, the latency as half the median
  round trip beyond the compute (both without each worker's first gradient after a (re)start);
  the same workers, consistency and number of updates."""
  from pdist.ps.simulator import Simulator
  applies = [r for r in records if r["op"] == "apply"]
  warm = _warm(records)  # a worker's first gradient after a (re)start pays first-call costs
  compute = np.asarray([r["compute_seconds"] for r in warm])
  trip = np.asarray([r["round_trip_seconds"] for r in warm])
  fitted = {"compute_mean": float(compute.mean()), "compute_spread": float(np.log(compute).std()),
            "latency": float(max(np.median(trip - compute), 0.0) / 2)}
  ps = ml_collections.ConfigDict(config.ps.to_dict())
  ps.compute_time.dist, ps.compute_time.mean = "lognormal", fitted["compute_mean"]
  ps.compute_time.spread = fitted["compute_spread"]
  ps.stragglers.fraction, ps.failures.at, ps.failures.rate = 0.0, (), 0.0
  network = ml_collections.ConfigDict(config.network.to_dict())
  network.latency, network.bandwidth = fitted["latency"], 0.0   # the measured latency only
  sim = Simulator(ps, network, [1], seed=config.train.seed)
  return np.asarray(sim.advance(len(applies)).staleness, np.int64), fitted


def _warm(records: list[dict]) -> list[dict]:
  """The applied gradients that were not their worker's first since it (re)started."""
  seen: set[int] = set()
  out = []
  for r in records:
    if r["op"] == "start":
      seen.clear()
    elif r["op"] == "lost":
      seen.discard(r["worker"])
    elif r["op"] == "apply":
      if r["worker"] in seen:
        out.append(r)
      seen.add(r["worker"])
  return out or [r for r in records if r["op"] == "apply"]


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
  """Half the L1 distance between the two samples' histograms (0: the same, 1: disjoint)."""
  n = int(max(a.max(initial=0), b.max(initial=0))) + 1
  pa = np.bincount(a, minlength=n) / max(len(a), 1)
  pb = np.bincount(b, minlength=n) / max(len(b), 1)
  return float(0.5 * np.abs(pa - pb).sum())


def plot_staleness(real: np.ndarray, emulated: np.ndarray, title: str, path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = int(max(real.max(initial=0), emulated.max(initial=0))) + 1
  x = np.arange(n)
  top = int(np.percentile(np.concatenate([real, emulated]), 99.5)) + 1
  fig, ax = plt.subplots(figsize=(6.4, 3.6))
  ax.bar(x - 0.2, np.bincount(real, minlength=n) / len(real), 0.4, label="real (Ray)")
  ax.bar(x + 0.2, np.bincount(emulated, minlength=n) / len(emulated), 0.4,
         label="emulator, fitted timing")
  beyond = int((real > top).sum() + (emulated > top).sum())
  ax.set_xlim(-0.6, top + 0.6)
  ax.set_xlabel("staleness (server version at apply - version pulled)"
                + (f"; {beyond} beyond {top} not shown" if beyond else ""))
  ax.set_ylabel("share of updates")
  ax.set_title(title, fontsize=10)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pdist.replay", usage=USAGE,
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir")
  parser.add_argument("--no-compare", action="store_true",
                      help="skip the emulator's prediction of the staleness")
  args = parser.parse_args(argv)
  workdir = args.workdir
  try:
    config, params, records = replay(workdir)
    from pdist import artifacts
    _, _, stored = artifacts.load_finished(workdir)
  except ConfigError as e:
    print(f"pdist.replay: {e}", file=sys.stderr)
    return 2
  updates = sum(r["op"] in ("apply", "round") for r in records)
  starts = sum(r["op"] == "start" for r in records)
  lost = sum(r["op"] == "lost" for r in records)
  print(f"pdist.replay: {updates} updates of {config.ps.workers} workers "
        f"({config.ps.consistency}) from {os.path.join(workdir, 'trace.jsonl')}; "
        f"{lost} lost gradients, {starts - 1} resumes")
  diffs = [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
           for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(stored))]
  same = all(np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(stored)))
  if same:
    print("pdist.replay: the replayed parameters equal the run's params.npz bit for bit")
  else:
    print(f"pdist.replay: the replayed parameters differ from the run's params.npz by up to "
          f"{max(diffs):.3g}")
  real = staleness_of(records)
  if not args.no_compare and config.ps.consistency != "bsp" and not real.size:
    print("pdist.replay: no update came after every worker had delivered one; nothing to "
          "compare with the emulator")
  elif not args.no_compare and config.ps.consistency != "bsp":
    emulated, fitted = emulated_staleness(config, records)
    emulated = emulated[len(emulated) - len(real):]   # as many, from the end: steady state
    tv = total_variation(real, emulated)
    path = plot_staleness(real, emulated, f"{config.ps.workers} workers, "
                          f"{config.ps.consistency}: total variation {tv:.3f}",
                          os.path.join(workdir, "staleness_real_vs_emulator.png"))
    print(f"pdist.replay: staleness once all workers run ({len(real)} updates): mean "
          f"{real.mean():.2f} real vs {emulated.mean():.2f} "
          f"emulated (compute {fitted['compute_mean'] * 1e3:.1f} ms, spread "
          f"{fitted['compute_spread']:.2f}, latency {fitted['latency'] * 1e3:.1f} ms); total "
          f"variation distance {tv:.3f}; figure {path}")
    with open(os.path.join(workdir, "replay.json"), "w") as f:
      json.dump({"updates": updates, "bit_for_bit": same, "max_difference": max(diffs),
                 "staleness_total_variation": tv, "fitted_timing": fitted,
                 "staleness_mean_real": float(real.mean()),
                 "staleness_mean_emulated": float(emulated.mean())}, f, indent=2)
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
