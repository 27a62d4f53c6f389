"""Low-communication training across processes: `local` (H updates between synchronisations) and
`gossip` (a ring) against `sync`, their floors, and PyTorch DDP.

P processes x 1 CPU device on loopback (jax.distributed, gloo); benchmarks/sync_processes.py's
workload: MLP 784-512-512-10, teacher data, global batch 256 (256/P a process), SGD lr 0.05
momentum 0.9 (each replica's inner optimizer). In one process group, alternating, best of
`--repeats`: pdist through train.run — `sync` (default buckets), `local` with plain averaging
every H updates for each H of `--inner-steps`, `gossip` on a ring — and the floor of local SGD:
a hand-written jitted `lax.scan` of H shard_map steps without a collective, then one `pmean` of
the parameters (batches on the devices, buffers donated). With `--ddp-python PYTHON` (an
environment with torch, see ddp_reference.py) PyTorch DistributedDataParallel runs the same
workload in the same sitting. Prints one JSON line.

  python benchmarks/local.py [--steps 400] [--inner-steps 8 32] [--ddp-python /tmp/torchvenv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from common import (ddp_rate, dispatch_rate, mlp_config, report, run_members, steady_rate,
                    sync_scan_floor_rate)



def pdist_rate(steps: int, strategy: str, tag: str, **fields) -> float:
  """A pdist run through train.run (its own rows, steady state)."""
  from pdist import config as config_lib
  from pdist import train
  c = mlp_config(steps=steps, strategy=strategy)
  for key, value in fields.items():
    config_lib.set_field(c, key, value)
  c.train.log_every = 50
  c.train.progress = False
  c.train.tensorboard = False
  c.checkpoint.every = 0
  config_lib.validate(c)
  return steady_rate(train.run(c, os.path.join(tempfile.gettempdir(), tag)).rows)


def local_scan_floor_rate(inner_steps: int, steps: int, repeats: int = 1) -> float:
  """The floor of local SGD: per call, a jitted shard_map of `inner_steps` local SGD-momentum
  steps (a `lax.scan`, no collective) and one `pmean` of the parameters; each device keeps its
  own parameters and momentum ([devices, ...] arrays sharded along `data`), its own batches on
  the device, buffers donated; calls dispatched back to back, blocked on every 4."""
  import jax
  import numpy as np
  import optax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from pdist import data, optim, tasks
  c = mlp_config()
  ds = data.load(c.data)
  task = tasks.build(c, ds)
  tx = optim.build(c)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  n, p = jax.process_count(), jax.process_index()
  stacked = NamedSharding(mesh, P("data"))
  params = jax.device_get(task.init(jax.random.PRNGKey(0)))
  opt = jax.device_get(tx.init(params))

  def stack(tree):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        stacked, np.asarray(x)[None], (n,) + np.shape(x)), tree)

  state = [stack(params), stack(opt)]
  b, i = c.data.batch_size // n, 16
  x = ds.x_train[:i * n * b].reshape((i, n * b) + ds.x_train.shape[1:])[:, p * b:(p + 1) * b]
  y = ds.y_train[:i * n * b].reshape(i, n * b)[:, p * b:(p + 1) * b]
  x = np.concatenate([x] * (inner_steps // i + 1))[:inner_steps]
  y = np.concatenate([y] * (inner_steps // i + 1))[:inner_steps]
  xs = jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, "data")), x,
                                              (inner_steps, n * b) + x.shape[2:])
  ys = jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, "data")), y,
                                              (inner_steps, n * b))

  def round_(params, opt_state, xs, ys):
    q, o = jax.tree.map(lambda a: a[0], (params, opt_state))

    def body(carry, batch):
      q, o = carry
      g = jax.grad(lambda w: task.loss(w, {"x": batch[0], "y": batch[1]}, None)[0])(q)
      updates, o = tx.update(g, o, q)
      return (optax.apply_updates(q, updates), o), None

    (q, o), _ = jax.lax.scan(body, (q, o), (xs, ys))
    q = jax.lax.pcast(jax.lax.pmean(q, "data"), "data", to="varying")
    return jax.tree.map(lambda a: a[None], (q, o))

  run = jax.jit(jax.shard_map(round_, mesh=mesh, in_specs=(P("data"), P("data"),
                                                           P(None, "data"), P(None, "data")),
                              out_specs=(P("data"), P("data"))), donate_argnums=(0, 1))
  return dispatch_rate(run, state, (xs, ys), max(1, steps // inner_steps), inner_steps, repeats)


def member(args) -> None:
  """One process of the group: every variant, alternately, `--repeats` times."""
  import jax
  jax.config.update("jax_num_cpu_devices", 1)
  jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.processes,
                             process_id=args.process_id,
                             coordinator_bind_address=args.coordinator)
  variants = [("sync", lambda tag: pdist_rate(args.steps, "sync", tag)),
              ("sync_floor", lambda tag: sync_scan_floor_rate(0, args.steps, bucket_mb=1.0))]
  for h in args.inner_steps:
    variants.append((f"local{h}", lambda tag, h=h: pdist_rate(
        args.steps, "local", tag, **{"local.inner_steps": h})))
    variants.append((f"local{h}_floor", lambda tag, h=h: local_scan_floor_rate(h, args.steps)))
  variants.append(("gossip_ring", lambda tag: pdist_rate(args.steps, "gossip", tag,
                                                         **{"gossip.topology": "ring"})))
  best: dict[str, float] = {}
  for r in range(args.repeats):
    for name, fn in variants:
      best[name] = max(best.get(name, 0.0), fn(f"{args.tag}_{name}_{r}"))
  if args.process_id == 0:
    print(json.dumps(best), flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--inner-steps", type=int, nargs="+", default=[8, 32])
  parser.add_argument("--ddp-python", default=None)
  parser.add_argument("--coordinator", help=argparse.SUPPRESS)
  parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--tag", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.coordinator:
    return member(args)
  rates = run_members(__file__, "local", args.processes, [
      "--steps", args.steps, "--repeats", args.repeats, "--inner-steps", *args.inner_steps])
  row = {f"{k}_steps_per_sec": v for k, v in rates.items()}
  for h in args.inner_steps:
    row[f"local{h}_over_floor"] = rates[f"local{h}"] / rates[f"local{h}_floor"]
    row[f"local{h}_over_sync"] = rates[f"local{h}"] / rates["sync"]
  row["sync_over_floor"] = rates["sync"] / rates["sync_floor"]
  if args.ddp_python:
    row["ddp_steps_per_sec"] = ddp_rate(args.ddp_python, args.processes, args.steps)
    for h in args.inner_steps:
      row[f"local{h}_over_ddp"] = rates[f"local{h}"] / row["ddp_steps_per_sec"]
    row["sync_over_ddp"] = rates["sync"] / row["ddp_steps_per_sec"]
  report("local", processes=args.processes, batch=256, steps=args.steps, **row)


if __name__ == "__main__":
  main()
