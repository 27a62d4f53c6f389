"""Vogels, Karimireddy & Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed
Optimization" (NeurIPS 2019; arXiv:1905.13727).

The claim, from the abstract: a "low-rank gradient compressor based on power iteration that can
[...] achieve test performance on par with SGD". PowerSGD views each layer's gradient as a
matrix M, computes P = orthogonalise(M Q), Q = M^T P from the previous step's Q (one warm-started
power iteration) and sends P and Q, with error feedback and momentum applied after decompression
(its Algorithm 2). Its CIFAR-10 / ResNet-18 table (as I recall Table 3 of the arXiv version:
uncompressed SGD 94.3%, rank 1 93.6%, rank 2 94.4%, rank 4 94.5% test accuracy, rank 2 sending
~136x less; these could not be re-checked from this machine, no network) is the basis of "rank 2
is on par with SGD". The paper gives no tolerance for "on par"; the range below (within 1 point
either way) is pdist's reading, fixed before the runs; the paper's own rank-2 gap is +0.1 point
and its rank-1 gap -0.7.

pdist's test, on experiments/compression.py (MNIST-1D, MLP 256-256, `ps` bsp with 4 workers on
shared batches of 32, SGD momentum 0.9 at the server, lr 0.05, 600 updates): the uncompressed
run against `powersgd` at rank 2 with error feedback (pdist/compression/powersgd.py; the 40x256,
256x256 and 256x10 weight matrices are sent as rank-2 factors, the biases dense: ~30x fewer
bytes pushed), on the same batches. 3 seeds.

Where pdist differs, and whether it matters: pdist's PowerSGD does not emulate the paper's
shared-subspace all-reduce (the paper all-reduces P, orthogonalises it, then all-reduces Q, so
all workers use one P and one Q and the applied update is rank r). Here each worker compresses
its own gradient with its own warm-started Q, and the server averages the 4 workers' rank-2
matrices, an update of rank up to 8. The bytes per worker are the same, but the applied update
can carry more of the gradient than the paper's, so a match here is weaker evidence than the
paper's (it favours pdist's PowerSGD), while a miss would be stronger. Also not copied: the
ResNet-18 / CIFAR-10 and LSTM / WikiText-2 tasks, and the paper's learning-rate warm-up.

Measured (full mode, 3 seeds): SGD 0.656 test accuracy, PowerSGD rank 2 0.646, a gap of
+0.97 +/- 1.7 points (per seed -1.2, +2.9, +1.2): inside "within 1 point" on the mean only, by
a hair, with a spread larger than the range, so read it as "not distinguishable from SGD at 3
seeds" rather than a clean match. The training loss after 600 updates is ~2.6x SGD's (0.23
against 0.09): rank 2 trains slower here even with the per-worker (rank up to 8) update.

Scaled to a 2-core CPU: 6 runs of 600 updates, about a minute (1 minute of CPU).

  python -m pdist.reproduce --only vogels2019_powersgd
"""

import os

PAPER = "Vogels et al. 2019, rank-2 PowerSGD with error feedback reaches SGD's test accuracy"
SEEDS = 3
RANK = 2
CLAIMS = [
    {"name": "accuracy_gap", "claim": "rank-2 PowerSGD with error feedback reaches uncompressed "
     "SGD's test accuracy (within 1 point; MNIST-1D MLP, 4 workers, same batches)",
     "metric": "eval_accuracy SGD - PowerSGD rank 2", "low": -0.01, "high": 0.01,
     "published": "94.4% vs SGD 94.3% at rank 2, CIFAR-10 ResNet-18 (Table 3, from memory)"},
]
VARIANTS = (("sgd", []), ("powersgd", ["--config.compression.name=powersgd",
                                       f"--config.compression.rank={RANK}"]))


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  """{claim name: [per-seed values]}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  spec = os.path.join(root, "experiments", "compression.py") + (":tiny" if tiny else "")
  seeds = 1 if tiny else SEEDS   # tiny: the machinery only, one seed
  every = 10 if tiny else 100
  from pdist.reproduce import run_variants
  runs, curves = run_variants(train, config_lib, spec, VARIANTS, seeds, workdir,
                              [f"--config.train.eval_every={every}"], ("step", "eval_accuracy"))
  acc = {name: [s["eval_accuracy"] for s in r] for name, r in runs.items()}
  ratio = runs["powersgd"][-1]["compression_ratio"]
  out = {"accuracy_gap": [s - p for s, p in zip(acc["sgd"], acc["powersgd"])]}

  os.makedirs(workdir, exist_ok=True)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  colors = {"sgd": "k", "powersgd": "C0"}
  labels = {"sgd": "SGD (uncompressed)",
            "powersgd": f"PowerSGD rank {RANK} + EF ({ratio:.0f}x fewer bytes)"}
  for name, runs in curves.items():
    steps = [s for s, _ in runs[0]]
    vals = np.array([[a for _, a in r] for r in runs])
    axes[0].plot(steps, vals.mean(0), "o-", ms=3, color=colors[name], label=labels[name])
    if len(runs) > 1:
      axes[0].fill_between(steps, vals.min(0), vals.max(0), color=colors[name], alpha=0.15)
  axes[0].set(xlabel="update", ylabel="test accuracy",
              title=f"test accuracy, mean and range of {seeds} seed(s)")
  axes[0].legend(fontsize=8, loc="lower right")
  gaps = [100 * g for g in out["accuracy_gap"]]
  axes[1].scatter(range(seeds), gaps, color="C0", zorder=3, label="pdist, per seed")
  axes[1].axhspan(-1.0, 1.0, color="gray", alpha=0.25, label="'on par' (within 1 point)")
  axes[1].axhline(-0.1, color="C2", ls="--", label="paper, rank 2: -0.1 (94.3 - 94.4)")
  axes[1].axhline(0.7, color="C1", ls=":", label="paper, rank 1: +0.7 (94.3 - 93.6)")
  axes[1].set_ylim(min(-3.5, min(gaps) - 0.5), max(3.5, max(gaps) + 0.5))
  axes[1].set_xlim(-0.5, seeds - 0.5)
  axes[1].set_xticks(range(seeds), [f"seed {s}" for s in range(seeds)])
  axes[1].set(ylabel="test accuracy gap, SGD - PowerSGD (points)",
              title="accuracy lost to rank-2 compression")
  axes[1].legend(fontsize=8, loc="lower right")
  fig.suptitle("PowerSGD (per-worker Q, no shared-subspace all-reduce): MNIST-1D MLP, ps bsp, "
               "4 workers", fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "figure.png"), dpi=110)
  plt.close(fig)
  return out
