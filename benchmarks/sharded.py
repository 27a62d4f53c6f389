"""The sharded layouts of `sync` against replicated data parallelism on the same devices.

Workload: experiments/charlm.py's Transformer at width 256, 4 blocks, 8 heads, context 128,
global batch 32, Adam, on 8 devices (emulated CPU devices on a CPU host: they share its cores,
so rates are for the record there; on an accelerator host, its devices). Per layout, one
train.run each (steady rate off its own rows) and one compile of a single update:
- per-device bytes of parameters, optimizer state and gradient (summary.json's `memory`);
- the compiled update's collectives (count and result bytes per kind, layout.collectives) and the
  network model's bytes one device sends per update (`bytes_sent`: ring formulas);
- the step rate relative to replicated data parallelism (`sync`, data 8) in the same run;
- for pipelines, the schedule's bubble (counted) beside (p - 1) / (m + p - 1).
Prints one JSON line.

  python benchmarks/sharded.py [--steps 30] [--only pipeline4_data2_micro4,...]
"""

from __future__ import annotations

import argparse
import os
import tempfile

# 8 devices: on a CPU host, 8 emulated ones (an accelerator host's own devices are unaffected)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

from common import ROOT, report, steady_rate  # noqa: E402

LAYOUTS = {
    "data8": {},
    "fsdp8_zero1": {"sync.mesh.data": 1, "sync.mesh.fsdp": 8, "sync.zero": 1},
    "fsdp8_zero2": {"sync.mesh.data": 1, "sync.mesh.fsdp": 8, "sync.zero": 2},
    "fsdp8_zero3": {"sync.mesh.data": 1, "sync.mesh.fsdp": 8, "sync.zero": 3},
    "tensor8": {"sync.mesh.data": 1, "sync.mesh.tensor": 8},
    "fsdp4_tensor2_zero3": {"sync.mesh.data": 1, "sync.mesh.fsdp": 4, "sync.mesh.tensor": 2,
                            "sync.zero": 3},
    "data2_fsdp2_tensor2_zero2": {"sync.mesh.data": 2, "sync.mesh.fsdp": 2,
                                  "sync.mesh.tensor": 2, "sync.zero": 2},
    "pipeline4_data2_micro4": {"sync.mesh.pipeline": 4, "sync.microbatches": 4},
    "pipeline4_data2_micro16": {"sync.mesh.pipeline": 4, "sync.microbatches": 16},
    "pipeline2_tensor2_data2_micro8": {"sync.mesh.pipeline": 2, "sync.mesh.tensor": 2,
                                       "sync.microbatches": 8},
}


def config(steps: int, fields: dict):
  from pdist import config as config_lib
  c = config_lib.load(os.path.join(ROOT, "experiments", "charlm.py") + ":sync")
  c.model.width, c.model.layers, c.model.heads = 256, 4, 8
  c.optim.schedule, c.optim.warmup_steps = "constant", 0
  c.train.steps, c.train.log_every, c.train.eval_every = steps, 5, 0
  c.train.progress, c.train.tensorboard = False, False
  c.checkpoint.every = 0
  for key, value in fields.items():
    config_lib.set_field(c, key, value)
  config_lib.validate(c)
  return c


def compiled_collectives(c) -> dict:
  import jax
  from pdist import data, strategies, tasks
  from pdist.parallel import layout
  s = strategies.build(c, tasks.build(c, data.load(c.data)))
  state = s.init(jax.random.PRNGKey(0))
  idx = jax.device_put(s.indices(0, 1), s._indices_sharding)
  text = s._chunk.lower(state, s.data, idx, 1, None).compile().as_text()
  return {"collectives": layout.collectives(text), "class": type(s).__name__,
          "bytes_sent_model": s.communication(1)["bytes_sent"]}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--only", default="", help="comma-separated layouts (data8 always runs)")
  args = parser.parse_args()
  from pdist import train
  out = {}
  chosen = ["data8"] + [n for n in args.only.split(",") if n and n != "data8"]
  unknown = [n for n in chosen if n not in LAYOUTS]
  if unknown:
    raise SystemExit(f"unknown layouts {unknown}; known: {sorted(LAYOUTS)}")
  for name, fields in LAYOUTS.items():
    if args.only and name not in chosen:
      continue
    c = config(args.steps, fields)
    result = train.run(c, tempfile.mkdtemp(prefix="pdist_bench_sharded_"))
    entry = {"steps_per_sec": steady_rate(result.rows), **compiled_collectives(c)}
    if "pipeline" in result.summary:
      entry["pipeline"] = result.summary["pipeline"]
    if "memory" in result.summary:
      entry.update(result.summary["memory"])
    else:   # data parallelism: everything on every device
      import jax
      nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(result.params))
      opt = sum(x.addressable_shards[0].data.nbytes
                for x in jax.tree.leaves(result.state["opt_state"]))
      entry.update(params_bytes_per_device=nbytes, optimizer_bytes_per_device=opt,
                   gradient_bytes_per_device=nbytes, params_bytes_total=nbytes)
    out[name] = entry
  base = out["data8"]["steps_per_sec"]
  for entry in out.values():
    entry["rate_vs_data8"] = entry["steps_per_sec"] / base
  report("sharded", steps=args.steps, layouts=out)


if __name__ == "__main__":
  main()
