"""int8 weight quantisation: per-channel symmetric, post-training or quantisation-aware.

    python -m pdist.quantize WORKDIR      # a finished run with params.npz

Every leaf of two or more dimensions (weight matrices, kernels, and also a Transformer's token
embedding and learned positions) is stored as int8 q with one float32 scale per channel of its
last axis: scale = max |w| over the channel / 127, q = round(w / scale) in [-127, 127], so
w - q * scale is at most scale / 2 per weight. One-dimensional leaves (biases, norms) stay
float32. The command evaluates the dequantised model on the held-out set next to the float one,
reports the accuracy drop and the size reduction, and writes WORKDIR/params_int8.npz and
WORKDIR/quantized.json.

Quantisation-aware training (`--config.model.qat=true`): the forward pass uses the quantised-
dequantised weights and the gradient passes straight through to the float weights (the
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

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pdist.quantize", description=__doc__.split(
      "\n\n")[0])
  parser.add_argument("workdir", help="a finished pdist run with params.npz")
  args = parser.parse_args(argv)
  from pdist import artifacts
  from pdist.registry import ConfigError
  try:
    config, task, params = artifacts.load_finished(args.workdir)
  except ConfigError as e:
    print(f"pdist.quantize: error: {e}", file=sys.stderr)
    return 2
  qat = bool(config.model.qat)
  if qat:   # the float32 figure is the float weights' own, without the run's fake quantisation
    from pdist import tasks
    config.model.qat = False
    task = tasks.build(config, task.dataset)
  pairs = jax.tree.map(lambda w: quantize(w) if quantizable(w) else None, params)
  dequant = jax.tree.map(lambda w, qs: w if qs is None else dequantize(*qs), params, pairs,
                         is_leaf=lambda x: x is None)
  float_metrics, int8_metrics = task.evaluate(params), task.evaluate(dequant)
  out = {"float32": float_metrics, "int8": int8_metrics,
         "bytes_float32": size_bytes(params, False), "bytes_int8": size_bytes(params, True),
         "trained_with_qat": qat}
  out["size_reduction"] = out["bytes_float32"] / out["bytes_int8"]
  key = "eval_accuracy" if "eval_accuracy" in float_metrics else "eval_loss"
  out["change"] = {key: int8_metrics[key] - float_metrics[key]}
  stored = {}
  for path, qs in jax.tree_util.tree_flatten_with_path(pairs, is_leaf=lambda x: x is None)[0]:
    if qs is not None:
      name = jax.tree_util.keystr(path)
      stored[f"{name}:int8"], stored[f"{name}:scale"] = np.asarray(qs[0]), np.asarray(qs[1])
  np.savez(os.path.join(args.workdir, "params_int8.npz"), **stored)
  with open(os.path.join(args.workdir, "quantized.json"), "w") as f:
    json.dump(out, f, indent=2)
  print(f"{args.workdir} ({config.model.name}{', trained with QAT' if qat else ''}): {key} {float_metrics[key]:.4f} in float32, "
        f"{int8_metrics[key]:.4f} with int8 weights ({out['change'][key]:+.4f}); "
        f"{out['bytes_float32'] / 1e6:.3f} MB -> {out['bytes_int8'] / 1e6:.3f} MB "
        f"({out['size_reduction']:.2f}x smaller)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
