"""int8 weight quantisation: per-channel symmetric, post-training or quantisation-aware.

    python -m pdist.quantize WORKDIR [--bits N]   # a finished run with params.npz

Every leaf of two or more dimensions (weight matrices, kernels, and also a Transformer's token
embedding and learned positions) is stored as int8 q with one float32 scale per channel of its
last axis: scale = max |w| over the channel / 127, q = round(w / scale) in [-127, 127], so
w - q * scale is at most scale / 2 per weight. `--bits N` (2..8) uses the grid -L..L with
L = 2^(N-1) - 1 instead (7 at 4 bits), still stored as int8; the default is 8, or the run's
config.model.qat_bits when it trained with QAT. One-dimensional leaves (biases, norms) stay
float32. The command evaluates the dequantised model on the held-out set next to the float one,
reports the accuracy drop and the size reduction, and writes WORKDIR/params_int8.npz and
WORKDIR/quantized.json. A run of `config.train.seeds = N` holds N copies: each is quantised and
evaluated on its own (quantized.json: `seeds`, one entry per seed, and the means over them;
params_int8.npz: each array with the copies on its leading axis, as params.npz).

Quantisation-aware training (`--config.model.qat=true`, grid `--config.model.qat_bits`): the
forward pass uses the quantised-dequantised weights and the gradient passes straight through to the float weights (the
straight-through estimator, w + stop_gradient(fq(w) - w)), so the model learns weights that
survive int8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

# the quantisation itself lives with the models (tasks' QAT forward pass uses it)
from pdist.models.int8 import (LEVELS, dequantize, fake_quantize, quantizable,  # noqa: F401
                              quantize, size_bytes)

def quantize_params(task, params, bits: int = 8) -> tuple[dict, dict, dict]:
  """(float32 metrics, int8 metrics, {leaf name: (int8 values, scales)}) of one parameter tree:
  each quantizable leaf quantised per channel on the `bits` grid, the model evaluated with the
  dequantised weights next to the float ones."""
  pairs = jax.tree.map(lambda w: quantize(w, bits) if quantizable(w) else None, params)
  dequant = jax.tree.map(lambda w, qs: w if qs is None else dequantize(*qs), params, pairs,
                         is_leaf=lambda x: x is None)
  stored = {}
  # a (values, scales) pair is one leaf here, not two (nor None)
  pair = lambda x: x is None or isinstance(x, tuple)  # noqa: E731
  for path, qs in jax.tree_util.tree_flatten_with_path(pairs, is_leaf=pair)[0]:
    if qs is not None:
      stored[jax.tree_util.keystr(path)] = (np.asarray(qs[0]), np.asarray(qs[1]))
  return task.evaluate(params), task.evaluate(dequant), stored


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pdist.quantize", description=__doc__.split(
      "\n\n")[0])
  parser.add_argument("workdir", help="a finished pdist run with params.npz")
  parser.add_argument("--bits", type=int, default=0,
                      help="the weight grid, 2..8 (default: 8, or the run's model.qat_bits)")
  args = parser.parse_args(argv)
  from pdist import artifacts
  from pdist.registry import ConfigError
  try:
    config, task, params = artifacts.load_finished(args.workdir)
  except ConfigError as e:
    print(f"pdist.quantize: error: {e}", file=sys.stderr)
    return 2
  qat = bool(config.model.qat)
  bits = args.bits or (int(config.model.qat_bits) if qat else 8)
  if bits not in range(2, 9):
    print(f"pdist.quantize: error: --bits must be 2..8 (stored as int8), got {bits}",
          file=sys.stderr)
    return 2
  if qat:   # the float32 figure is the float weights' own, without the run's fake quantisation
    from pdist import tasks
    config.model.qat = False
    task = tasks.build(config, task.dataset)
  copies = artifacts.seed_params(config, params)
  results = [(seed, *quantize_params(task, p, bits)) for seed, p in copies]
  one = copies[0][1]
  key = "eval_accuracy" if "eval_accuracy" in results[0][1] else "eval_loss"
  per_seed = [{"seed": seed, "float32": f, "int8": q, "change": {key: q[key] - f[key]}}
              for seed, f, q, _ in results]
  if len(results) == 1:
    out = {k: per_seed[0][k] for k in ("float32", "int8", "change")}
  else:   # the means over the seeds, and each seed's own figures
    out = {part: {k: float(np.mean([s[part][k] for s in per_seed])) for k in per_seed[0][part]}
           for part in ("float32", "int8", "change")}
    out["seeds"] = per_seed
  out.update(bytes_float32=size_bytes(one, False), bytes_int8=size_bytes(one, True),
             trained_with_qat=qat, bits=bits)
  out["size_reduction"] = out["bytes_float32"] / out["bytes_int8"]
  stored = {}
  for name in results[0][3]:   # with several seeds, the copies stacked as in params.npz
    for i, part in enumerate(("int8", "scale")):
      arrays = [r[3][name][i] for r in results]
      stored[f"{name}:{part}"] = arrays[0] if len(arrays) == 1 else np.stack(arrays)
  np.savez(os.path.join(args.workdir, "params_int8.npz"), **stored)
  with open(os.path.join(args.workdir, "quantized.json"), "w") as f:
    json.dump(out, f, indent=2)
  size = (f"{out['bytes_float32'] / 1e6:.3f} MB -> {out['bytes_int8'] / 1e6:.3f} MB "
          f"({out['size_reduction']:.2f}x smaller)")
  what = f"{config.model.name}{', trained with QAT' if qat else ''}"
  grid = "int8 weights" if bits == 8 else f"{bits}-bit weights"
  figures = [f"{key} {s['float32'][key]:.4f} in float32, {s['int8'][key]:.4f} with {grid} "
             f"({s['change'][key]:+.4f})" for s in per_seed]
  if len(per_seed) == 1:
    print(f"{args.workdir} ({what}): {figures[0]}; {size}")
  else:
    print(f"{args.workdir} ({what}, {len(per_seed)} seeds, each quantised on its own; {size} "
          "a seed):")
    for s, text in zip(per_seed, figures):
      print(f"  seed {s['seed']}: {text}")
    print(f"  mean: {key} {out['float32'][key]:.4f} in float32, {out['int8'][key]:.4f} with int8 "
          f"weights ({out['change'][key]:+.4f})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
