"""Federated rounds per second: pdist's `federated` strategy against the true floor, at three
scales, and the cost of secure aggregation. Prints one JSON line.

Workload (the anchors' own): sklearn digits, the first 1400 examples as 100 IID clients of 14;
MLP 64-32-10 ReLU; each round 10 clients, 1 local epoch of batch 10 (2 steps, the second
masked to 4 examples), plain SGD lr 0.1, server averaging (server SGD lr 1); 300 rounds, test
accuracy at the end. Anchors measured on the same 2-core machine by whoever filed the issue:
Flower 1.42's simulation 6.8 rounds/s (+14 s start-up), a plain PyTorch loop 224 rounds/s.

- `rounds_per_sec`: train.run (metrics file on, progress bar off, one evaluation at the end),
  steady state between its first and last logged rows, best of 3.
- `floor_rounds_per_sec`: the same math hand-written as one jitted `lax.scan` over 100 rounds
  (clients vmapped, their local steps a scan over batches already gathered on the device, buffers
  donated): no sampling, shuffling or planning inside.
- scale: 1,000 clients with 100 a round and 10,000 with 1,000 a round (synthetic teacher data in
  R^64, 14 examples a client), rounds/s and the process's peak memory (fresh subprocess).
- secure aggregation with 100 clients a round (all of the 100 digits clients) through train.run
  (the strategy's own secure round, SecAgg on the complete graph): seconds per round against the
  plain round at the same size.
- `secagg_*` (also alone: --only secagg): the protocol (federated/secagg.py) on this workload's
  update (2,411 ring elements) at 100, 1,000 and 10,000 clients a round, SecAgg+ with degree and
  threshold from `harary_parameters(n, gamma=0.05, delta=0.05)` (and SecAgg on the complete graph,
  t a majority, at 100), 5% of the clients dropping (half before uploading, half after): the
  protocol's wall seconds for the whole round simulated serially (every client's work and the
  server's), added to a plain round of the same size (train.run, synthetic data, all n clients a
  round, fresh subprocess) to give `secure_sec_per_round` and its ratio to the plain round; the
  same with the clients' work in parallel (`parallel_*`: the mean client's seconds plus the
  server's); the exponent of the growth of a secure round between sizes against n log n's (of the
  wall and CPU seconds, and of the deterministic counts: noise-free); and the protocol's counts
  per client (bytes, key agreements, PRG output). The sum is checked bit for bit against the
  plain ring sum. Numbers on a shared machine are noisy.

  python benchmarks/federated.py [--rounds 300] [--only secagg]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import PEAK_RSS_MB, ROOT, report, steady_rate

FLOWER, TORCH = 6.8, 224.0


def workload(rounds: int, clients: int = 100, per_round: int = 10, synthetic: bool = False):
  from pdist import config as config_lib
  c = config_lib.load(os.path.join(ROOT, "experiments", "fedavg.py"), [])
  c.federated.clients, c.federated.clients_per_round = clients, per_round
  c.federated.local_epochs, c.federated.client_lr = 1, 0.1
  if synthetic:
    c.data.name, c.data.dim, c.data.num_train, c.data.num_test = "teacher", 64, clients * 14, 1000
  c.train.steps, c.train.log_every, c.train.eval_every = rounds, max(rounds // 6, 1), 0
  c.train.progress, c.train.tensorboard = False, False
  return c


def steady(config, repeats: int = 3) -> tuple[float, dict]:
  import tempfile

  from pdist import train
  best, last_row = 0.0, {}
  for _ in range(repeats):
    rows = train.run(config, tempfile.mkdtemp(prefix="pdist_bench_")).rows
    rate = steady_rate(rows)
    best, last_row = max(best, rate), rows[-1]
  return best, last_row


def floor_rate(config, rounds: int = 100, repeats: int = 3) -> float:
  """The same rounds as one jitted scan, data pre-gathered: [rounds, clients, steps, batch]."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from pdist import data, tasks
  ds = data.load(config.data)
  task = tasks.build(config, ds)
  params = task.init(jax.random.PRNGKey(0))
  m, b, size = config.federated.clients_per_round, config.data.batch_size, 14
  steps = -(-size // b)
  rng = np.random.default_rng(0)
  idx = np.zeros((rounds, m, steps * b), np.int32)
  for r in range(rounds):
    for i, c in enumerate(rng.choice(100, m, replace=False)):
      idx[r, i, :size] = c * size + rng.permutation(size)
  mask = np.tile((np.arange(steps * b) < size).astype(np.float32), (rounds, m, 1))
  xs = jnp.asarray(ds.x_train[idx].reshape((rounds, m, steps, b) + ds.x_train.shape[1:]))
  ys = jnp.asarray(ds.y_train[idx].reshape(rounds, m, steps, b))
  ms = jnp.asarray(mask.reshape(rounds, m, steps, b))
  lr = config.federated.client_lr

  def client(w0, x, y, mk):
    def step(w, batch):
      g = jax.grad(lambda p: task.loss(p, {"x": batch[0], "y": batch[1], "mask": batch[2]},
                                       None)[0])(w)
      return jax.tree.map(lambda a, d: a - lr * d, w, g), None
    w, _ = jax.lax.scan(step, w0, (x, y, mk))
    return jax.tree.map(lambda a, b: a - b, w, w0)

  @jax.jit
  def run(params, xs, ys, ms):
    def one_round(p, batch):
      deltas = jax.vmap(client, in_axes=(None, 0, 0, 0))(p, *batch)
      return jax.tree.map(lambda a, d: a + d.mean(0), p, deltas), None
    return jax.lax.scan(one_round, params, (xs, ys, ms))[0]

  run = jax.jit(run, donate_argnums=(0,))
  jax.block_until_ready(run(params, xs, ys, ms))
  best = float("inf")
  for _ in range(repeats):
    p = task.init(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    jax.block_until_ready(run(p, xs, ys, ms))
    best = min(best, time.perf_counter() - t0)
  return rounds / best


def scale_run(clients: int, per_round: int, rounds: int) -> dict:
  """rounds/s and peak memory of one scale, in a fresh subprocess."""
  code = ("import sys; sys.path.insert(0, 'benchmarks'); from federated import workload, steady; "
          f"r, _ = steady(workload({rounds}, {clients}, {per_round}, synthetic=True), repeats=1); "
          f"print(r, {PEAK_RSS_MB})")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=900)
  try:
    rate, rss = out.stdout.strip().splitlines()[-1].split()
    return {"rounds_per_sec": float(rate), "peak_rss_mb": float(rss)}
  except (ValueError, IndexError):
    return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no output"}


def secure_cost(rounds: int = 12) -> dict:
  plain = workload(rounds * 10, per_round=100)
  secure = workload(rounds, per_round=100)
  secure.federated.secure_aggregation = True
  plain_rate, _ = steady(plain, repeats=2)
  secure_rate, row = steady(secure, repeats=2)
  return {"plain_sec_per_round": 1 / plain_rate, "secagg_sec_per_round": 1 / secure_rate,
          "secagg_overhead": plain_rate / secure_rate,
          "secagg_client_sec_per_client": row["secagg_client_seconds"] / (rounds * 100),
          "secagg_client_sec_per_round": row["secagg_client_seconds"] / rounds,
          "secagg_server_sec_per_round": row["secagg_server_seconds"] / rounds}


UPDATE_LENGTH = 64 * 32 + 32 + 32 * 10 + 10 + 1     # the MLP's parameters and the weight
SECAGG_GAMMA, SECAGG_DELTA = 0.05, 0.05
PLAIN_ROUNDS = {100: 120, 1000: 60, 10000: 12}       # multiples of 6: equal chunks


def secagg_round(n: int, graph: str, repeats: int) -> dict:
  """One secure aggregation round of n clients (the protocol alone): best wall seconds of
  `repeats`, the measured split, and the deterministic counts."""
  import numpy as np

  from pdist.federated import secagg
  if graph == "harary":
    sa = secagg.SecureAggregation.secagg_plus(UPDATE_LENGTH, n, SECAGG_GAMMA, SECAGG_DELTA)
  else:
    sa = secagg.SecureAggregation(UPDATE_LENGTH, n, n // 2 + 1)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 2 ** 32, size=(n, UPDATE_LENGTH), dtype=np.uint32)
  phase = np.full(n, secagg.COMPLETED)
  drops = rng.permutation(n)[:int(SECAGG_DELTA * n)]
  phase[drops[:len(drops) // 2]] = secagg.ADVERTISED_ONLY
  phase[drops[len(drops) // 2:]] = secagg.UPLOADED_THEN_DROPPED
  best, cpu, cost = float("inf"), float("inf"), None
  for r in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    total = sa.sum(x, phase, r)
    elapsed = time.perf_counter() - t0
    cpu = min(cpu, time.process_time() - c0)
    if elapsed < best:
      best, cost = elapsed, sa.last_cost
  uploaded = phase >= secagg.UPLOADED_THEN_DROPPED
  if not np.array_equal(total, x[uploaded].sum(axis=0, dtype=np.uint32)):
    raise AssertionError(f"secure aggregation of {n} clients gave a wrong sum")
  done = cost.phase == secagg.COMPLETED
  return {"graph": graph, "degree": cost.degree, "threshold": cost.threshold,
          "protocol_sec": best, "protocol_cpu_sec": cpu, "client_sec_total": cost.client_seconds,
          "client_sec_per_client": cost.client_seconds / n, "server_sec": cost.server_seconds,
          "bytes_up_per_client": int(cost.bytes_up_per_client[done].mean()),
          "bytes_down_per_client": int(cost.bytes_down_per_client[done].mean()),
          "key_agreements_per_client": float(cost.client_key_agreements[done].mean()),
          "prg_elements_per_client": float(cost.client_prg_elements[done].mean()),
          "key_agreements": int(cost.client_key_agreements.sum()) + cost.server_key_agreements,
          "prg_elements": int(cost.client_prg_elements.sum()) + cost.server_prg_elements,
          "server_key_agreements": cost.server_key_agreements,
          "server_prg_elements": cost.server_prg_elements,
          "secrets_reconstructed": cost.server_secrets_reconstructed}


def secagg_cost(sizes=(100, 1000, 10000)) -> dict:
  """secagg_* fields: SecAgg+ at each size (SecAgg at 100) against a plain round of that size."""
  import math
  out = {"secagg_gamma": SECAGG_GAMMA, "secagg_delta": SECAGG_DELTA,
         "secagg_update_length": UPDATE_LENGTH, "plain_bytes_up_per_client": 4 * UPDATE_LENGTH}
  secure = {}
  for n in sizes:
    plain = scale_run(n, n, PLAIN_ROUNDS.get(n, 12))
    plain_sec = 1 / plain["rounds_per_sec"] if "rounds_per_sec" in plain else float("nan")
    runs = [("plus", "harary")] + ([("complete", "complete")] if n <= 100 else [])
    for name, graph in runs:
      row = secagg_round(n, graph, repeats=5 if n <= 100 else 2 if n <= 1000 else 1)
      row.update(plain_sec_per_round=plain_sec,
                 secure_sec_per_round=plain_sec + row["protocol_sec"],
                 parallel_secure_sec_per_round=plain_sec + row["client_sec_per_client"]
                 + row["server_sec"])
      row.update(overhead_x=row["secure_sec_per_round"] / plain_sec,
                 parallel_overhead_x=row["parallel_secure_sec_per_round"] / plain_sec)
      out[f"secagg_{name}_{n}"] = row
      if name == "plus":
        secure[n] = row
  ns = sorted(secure)
  for a, b in zip(ns, ns[1:]):
    growth = lambda key: math.log(secure[b][key] / secure[a][key]) / math.log(b / a)  # noqa: E731
    out[f"secagg_plus_growth_exponent_{a}_{b}"] = growth("secure_sec_per_round")
    out[f"secagg_plus_protocol_growth_exponent_{a}_{b}"] = growth("protocol_sec")
    out[f"secagg_plus_protocol_cpu_growth_exponent_{a}_{b}"] = growth("protocol_cpu_sec")
    # the work itself, noise-free: X25519 agreements and PRG output of the deployed protocol
    out[f"secagg_plus_agreements_growth_exponent_{a}_{b}"] = growth("key_agreements")
    out[f"secagg_plus_prg_growth_exponent_{a}_{b}"] = growth("prg_elements")
    out[f"n_log_n_exponent_{a}_{b}"] = (math.log(b * math.log(b) / (a * math.log(a)))
                                        / math.log(b / a))
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--rounds", type=int, default=300)
  parser.add_argument("--scale_rounds", type=int, default=120)  # multiples of 6: equal chunks
  parser.add_argument("--only", choices=("all", "secagg"), default="all")
  args = parser.parse_args()
  if args.only == "secagg":
    report("federated_secagg", **secagg_cost())
    return
  config = workload(args.rounds)
  rate, last = steady(config)
  floor = floor_rate(config)
  report("federated", rounds_per_sec=rate, floor_rounds_per_sec=floor, of_floor=rate / floor,
         x_flower=rate / FLOWER, x_torch_loop=rate / TORCH,
         test_accuracy=last.get("eval_accuracy"), rounds=args.rounds,
         clients_1000_per_round_100=scale_run(1000, 100, args.scale_rounds),
         clients_10000_per_round_1000=scale_run(10000, 1000, max(args.scale_rounds // 5, 12)),
         **secure_cost(), **secagg_cost())


if __name__ == "__main__":
  main()
