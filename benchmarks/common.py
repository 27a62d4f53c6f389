"""Shared benchmark helpers: the MLP workload, timing, and the one-JSON-line report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


WORKLOAD = os.path.join(ROOT, "experiments", "teacher_mlp.py")


def mlp_config(batch_size: int = 256, steps: int = 1000, strategy: str = "single"):
  """experiments/teacher_mlp.py: MLP 784-512-512-10, teacher data, SGD lr 0.05 momentum 0.9."""
  from pdist import config as config_lib
  return config_lib.load(WORKLOAD, [f"--config.data.batch_size={batch_size}",
                                    f"--config.train.steps={steps}",
                                    f"--config.strategy={strategy}"])


def timed(fn, repeats: int = 3) -> float:
  """Best wall seconds of `repeats` calls of fn() (fn must block on its result)."""
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def machine() -> str:
  import jax
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  return f"{platform.machine()} {os.cpu_count()} cores, {dev.platform}: {kind}"


def steady_rate(rows) -> float:
  """Updates per second of train.run's loop in steady state, off the run's own rows: from the
  first row (the first chunk's compilation is before it) to the last row that is not the final
  one when that one evaluates or checkpoints at the end (the evaluation's compilation, the last
  save and its wait are end costs, not the loop's; on a GPU they were most of a 3000-step run)."""
  first, last = rows[0], rows[-1]
  if "eval_loss" in last and len(rows) > 2:
    last = rows[-2]
  return (last["step"] - first["step"]) / (last["wall_time"] - first["wall_time"])


def report(name: str, **fields) -> None:
  row = {"benchmark": name, "machine": machine(), **fields}
  print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))


# The peak resident memory of this process, for a benchmark's fresh subprocess to print. Read from
# /proc/self/status (VmHWM, reset at exec), not getrusage: a child's ru_maxrss starts from its
# parent's size at fork time, so a large benchmark parent would leak into the child's figure.
PEAK_RSS_MB = ("float([l.split()[1] for l in open('/proc/self/status') "
               "if l.startswith('VmHWM')][0]) / 1024")


def scan_floor_rate(config, steps: int, chunk: int = 100, repeats: int = 3) -> float:
  """The true floor: what a JAX expert would write for the same math — a jitted `lax.scan` of
  `chunk` optimizer steps (config.optim's, built by optax as pdist builds it) over batches already on the device, buffers donated, calls dispatched back to
  back (blocked on once at the end). Steps per second, best of `repeats`."""
  import jax
  import jax.numpy as jnp
  import optax

  from pdist import data, optim, tasks
  ds = data.load(config.data)
  task = tasks.build(config, ds)
  tx = optim.build(config)          # the run's own optimizer (SGD momentum for the MLP workloads)
  params = task.init(jax.random.PRNGKey(0))
  b = config.data.batch_size
  n = min(chunk, ds.num_train // b)
  xs = jnp.asarray(ds.x_train[:n * b].reshape((n, b) + ds.x_train.shape[1:]))
  ys = jnp.asarray(ds.y_train[:n * b].reshape((n, b) + ds.y_train.shape[1:]))
  xs = jnp.concatenate([xs] * (-(-chunk // n)))[:chunk]
  ys = jnp.concatenate([ys] * (-(-chunk // n)))[:chunk]

  def scan(params, opt_state, xs, ys):
    def body(carry, batch):
      p, o = carry
      g = jax.grad(lambda q: task.loss(q, {"x": batch[0], "y": batch[1]}, None)[0])(p)
      updates, o = tx.update(g, o, p)
      return (optax.apply_updates(p, updates), o), None
    (params, opt_state), _ = jax.lax.scan(body, (params, opt_state), (xs, ys))
    return params, opt_state

  run = jax.jit(scan, donate_argnums=(0, 1))
  state = [params, tx.init(params)]
  state[:] = run(*state, xs, ys)
  jax.block_until_ready(state)

  def go():
    p, o = state
    for _ in range(max(1, steps // chunk)):
      p, o = run(p, o, xs, ys)
    jax.block_until_ready(p)
    state[:] = [p, o]

  return max(1, steps // chunk) * chunk / timed(go, repeats)


def sync_scan_floor_rate(devices: int, steps: int, chunk: int = 50, bucket_mb: float = 0.0,
                         repeats: int = 1) -> float:
  """The floor of `sync` (teacher MLP workload, global batch 256, SGD momentum): a jitted
  `lax.scan` of `chunk` shard_map steps over the first `devices` devices (0 = all, every process
  of a jax.distributed group), batches already sharded on the devices, buffers donated, the
  gradient `pmean`-ed per leaf (bucket_mb=0) or in buckets; calls dispatched back to back,
  blocked on every 4 (collectives queued without bound abort on emulated CPU devices: the sharp
  edges in docs/ARCHITECTURE.md). Steps per second, best of `repeats`."""
  import jax
  import numpy as np
  import optax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from pdist import data, optim, tasks
  from pdist.parallel import buckets
  c = mlp_config()
  ds = data.load(c.data)
  task = tasks.build(c, ds)
  tx = optim.build(c)
  mesh = Mesh(np.array(jax.devices()[:devices or None]), ("data",))
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "data"))
  params = jax.device_get(task.init(jax.random.PRNGKey(0)))
  state = [jax.device_put(params, rep), jax.device_put(jax.device_get(tx.init(params)), rep)]
  b, n, p, i = c.data.batch_size, jax.process_count(), jax.process_index(), 16
  local = b // n  # this process's share of each global batch
  x = ds.x_train[:i * b].reshape((i, b) + ds.x_train.shape[1:])[:, p * local:(p + 1) * local]
  y = ds.y_train[:i * b].reshape(i, b)[:, p * local:(p + 1) * local]
  x = np.concatenate([x] * (chunk // i + 1))[:chunk]
  y = np.concatenate([y] * (chunk // i + 1))[:chunk]
  xs = jax.make_array_from_process_local_data(split, x, (chunk, b) + x.shape[2:])
  ys = jax.make_array_from_process_local_data(split, y, (chunk, b))

  def scan(params, opt_state, xs, ys):
    def body(carry, batch):
      q, o = carry
      loss = lambda w: task.loss(w, {"x": batch[0], "y": batch[1]}, None)[0]  # noqa: E731
      g = buckets.pmean(jax.grad(loss)(jax.lax.pcast(q, "data", to="varying")), "data",
                        int(bucket_mb * 2**20))
      updates, o = tx.update(g, o, q)
      return (optax.apply_updates(q, updates), o), None
    return jax.lax.scan(body, (params, opt_state), (xs, ys))[0]

  run = jax.jit(jax.shard_map(scan, mesh=mesh, in_specs=(P(), P(), P(None, "data"),
                                                         P(None, "data")),
                              out_specs=(P(), P())), donate_argnums=(0, 1))
  return dispatch_rate(run, state, (xs, ys), max(1, steps // chunk), chunk, repeats)


def ddp_rate(python: str, processes: int, steps: int) -> float:
  """PyTorch DDP's steady steps/s on the MLP workload (ddp_reference.py, run by `python`: an
  environment with torch), `processes` gloo processes of one thread each."""
  here = os.path.dirname(os.path.abspath(__file__))
  out = subprocess.run([python, os.path.join(here, "ddp_reference.py"), "--processes",
                        str(processes), "--steps", str(steps), "--threads", "1"],
                       check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])["ddp_steps_per_sec"]


def dispatch_rate(run, state: list, args: tuple, calls: int, per_call: int, repeats: int) -> float:
  """Updates/s of `calls` back-to-back calls state[:] = run(*state, *args) (each covering
  `per_call` updates; blocked on every 4th call, so the queue stays bounded), after one call that
  compiles; best of `repeats`."""
  import jax
  state[:] = run(*state, *args)
  jax.block_until_ready(state)

  def go():
    for k in range(calls):
      state[:] = run(*state, *args)
      if k % 4 == 3:
        jax.block_until_ready(state)
    jax.block_until_ready(state)

  return calls * per_call / timed(go, repeats)


def run_members(script: str, name: str, processes: int, args: list) -> dict:
  """Runs `processes` copies of `script` as one process group on loopback (jax.distributed:
  each gets --coordinator, --process-id and --tag besides `args`, and this machine's CPU as its
  one device) and returns the JSON object on process 0's last line of output."""
  from pdist.launch import free_port
  coordinator = f"127.0.0.1:{free_port()}"
  tag = f"pdist_bench_{name}_{os.getpid()}"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get(
      "PYTHONPATH")])))
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, os.path.abspath(script), "--processes",
                             str(processes), *map(str, args), "--coordinator", coordinator,
                             "--process-id", str(i), "--tag", tag], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(processes)]
  outs = [p.communicate() for p in procs]
  if any(p.returncode for p in procs):
    failed = next(i for i, p in enumerate(procs) if p.returncode)
    last = outs[failed][1].strip().splitlines()[-1:] or ["(no message)"]
    sys.exit(f"{name}: a process failed (status {[p.returncode for p in procs]}); process "
             f"{failed}: {last[0]}")
  outs = [out for out, _ in outs]
  return json.loads(outs[0].strip().splitlines()[-1])
