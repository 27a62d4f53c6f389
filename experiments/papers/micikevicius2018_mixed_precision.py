"""Micikevicius, Narang, Alben, Diamos, Elsen, Garcia, Ginsburg, Houston, Kuchaiev, Venkatesh & Wu,
"Mixed Precision Training" (ICLR 2018; arXiv:1710.03740).

The claim (abstract): training with weights, activations and gradients in IEEE half precision,
with a single-precision master copy of the weights and loss scaling, matches single-precision
accuracy "across a wide variety of tasks ... without changing any hyper-parameters". Published
(Table 1, ILSVRC12 top-1, FP32 baseline -> mixed precision; checked against a stored copy of the
paper's text): AlexNet 56.77 -> 56.93, VGG-D 65.40 -> 65.43,
GoogLeNet 68.33 -> 68.43, Inception v2 70.03 -> 70.02, Inception v3 73.85 -> 74.13, ResNet-50
75.92 -> 76.04: differences of -0.01 to +0.28 points, all called a match. The range below: the
mixed-precision model within 0.28 points (the table's largest difference, either way) of float32.

The paper's recipe: FP16 storage and arithmetic (FP32 accumulation), an FP32 master copy of the
weights updated by the optimizer, and loss scaling so that small gradients survive FP16's range.
pdist has no float16 training; it has bfloat16 (`--config.model.dtype=bfloat16`, README "Low
precision"): activations and matmuls in bfloat16, parameters, optimizer state and the loss in
float32, i.e. the master-copy scheme, but bfloat16 has float32's 8-bit exponent, so no loss
scaling is needed (or offered) - a different 16-bit format from the paper's (8 bits of mantissa
against FP16's 11, more rounding, no underflow). Workloads, float32 against bfloat16 on the same
seeds (same initialisation and batches, so each pair differs only by precision): experiments/
mnist1d.py's 1-D CNN (`cnn` preset, 1500 updates instead of 3000, test accuracy ~0.86) and its
MLP 256-256 (`mlp` preset, 4000 updates instead of 8000: it has stopped improving), 3 seeds each
as one vmapped program (`train.seeds=3`). Scaled: 1000 MNIST-1D test signals instead of 50000
ImageNet images, so one example is 0.1 point and the seeds' spread is larger than the range.

Known before this file (README, 3000 updates, one seed): the CNN 0.900 in float32 and in bfloat16.

Measured (first full run, 3.7 minutes wall on the shared 2 cores, load ~11): CNN float32 0.882 /
0.836 / 0.849, bfloat16 0.875 / 0.834 / 0.851 (seeds 0-2): gap -0.23 +- 0.37 points (pass, the mean
just inside 0.28); MLP float32 0.640 / 0.657 / 0.642, bfloat16 0.636 / 0.657 / 0.643: gap -0.10 +-
0.22 points (pass). Single seeds differ by up to 0.7 points (7 test signals), more than the range:
the pass rests on the mean of 3.

  python -m pdist.reproduce --only micikevicius2018_mixed_precision
"""

import os

PAPER = ("Micikevicius et al. 2018, 16-bit mixed precision matches float32 accuracy "
         "(pdist: bfloat16)")
SEEDS = 3
TABLE1 = {"AlexNet": 0.16, "VGG-D": 0.03, "GoogLeNet": 0.10, "Inception v2": -0.01,
          "Inception v3": 0.28, "ResNet-50": 0.12}   # mixed - FP32 top-1, points
CLAIMS = [
    {"name": "cnn_gap", "claim": "the MNIST-1D CNN trained in bfloat16 mixed precision matches "
     "its float32 test accuracy", "metric": "eval_accuracy bfloat16 - float32",
     "low": -0.0028, "high": 0.0028,
     "published": "-0.01 to +0.28 points (Table 1, ILSVRC12 top-1, FP16)"},
    {"name": "mlp_gap", "claim": "and so does the MNIST-1D MLP",
     "metric": "eval_accuracy bfloat16 - float32", "low": -0.0028, "high": 0.0028,
     "published": "-0.01 to +0.28 points (Table 1, ILSVRC12 top-1, FP16)"},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  """{claim name: [per-seed values]}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  spec = os.path.join(root, "experiments", "mnist1d.py")
  common = [f"--config.train.seeds={SEEDS}", "--config.train.progress=False",
            "--config.train.tensorboard=False",
            "--config.checkpoint.every=0"]
  acc = {}
  for model, steps in (("cnn", 1500), ("mlp", 4000)):
    for dtype in ("float32", "bfloat16"):
      config = config_lib.load(f"{spec}:{model}" + (",tiny" if tiny else ""), common + [
          f"--config.model.dtype={dtype}"] + ([] if tiny else [f"--config.train.steps={steps}"]))
      acc[(model, dtype)] = np.array(train.run(config, os.path.join(
          workdir, f"{model}_{dtype}")).summary["eval_accuracy_seeds"])
  out = {f"{m}_gap": [float(x) for x in acc[(m, "bfloat16")] - acc[(m, "float32")]]
         for m in ("cnn", "mlp")}

  os.makedirs(workdir, exist_ok=True)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
  for i, model in enumerate(("cnn", "mlp")):
    for s in range(SEEDS):
      pair = [acc[(model, "float32")][s], acc[(model, "bfloat16")][s]]
      axes[0].plot([2 * i, 2 * i + 1], pair, "-o", color=f"C{s}", ms=4,
                   label=f"seed {s}" if i == 0 else None)
  axes[0].set_xticks(range(4), ["CNN\nfloat32", "CNN\nbfloat16", "MLP\nfloat32", "MLP\nbfloat16"])
  axes[0].set(ylabel="test accuracy", title="MNIST-1D: float32 vs bfloat16 on the same seeds")
  axes[0].legend(fontsize=8, loc="center right")
  for i, model in enumerate(("cnn", "mlp")):
    points = 100 * np.array(out[f"{model}_gap"])
    axes[1].scatter([i] * SEEDS, points, color="C0", zorder=3,
                    label="pdist, bfloat16 (per seed)" if i == 0 else None)
    axes[1].scatter(i, points.mean(), marker="_", s=400, color="C0", zorder=3,
                    label="pdist, mean" if i == 0 else None)
  axes[1].scatter([2] * len(TABLE1), list(TABLE1.values()), marker="x", color="k", zorder=3,
                  label="paper, FP16 (Table 1: six ImageNet CNNs)")
  axes[1].axhspan(-0.28, 0.28, color="gray", alpha=0.25, label="range: within 0.28 points")
  axes[1].axhline(0.0, color="gray", lw=0.8)
  axes[1].set_xticks(range(3), ["MNIST-1D CNN", "MNIST-1D MLP", "paper: ILSVRC12"])
  axes[1].set(xlim=(-0.5, 2.5), ylabel="test accuracy, 16-bit - float32 (points)",
              title="mixed precision's accuracy gap")
  axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "figure.png"), dpi=110)
  plt.close(fig)
  return out
