"""Lin, Han, Mao, Wang & Dally, "Deep Gradient Compression: Reducing the Communication Bandwidth
for Distributed Training" (ICLR 2018; arXiv:1712.01887).

The claim, from the abstract: "we find 99.9% of the gradient exchange in distributed SGD are
redundant [...] Deep Gradient Compression achieves a gradient compression ratio from 270x to 600x
without losing accuracy, cutting the gradient size of ResNet-50 from 97MB to 0.35MB". DGC sends
the top 0.1% of each worker's accumulated gradient and adds four techniques to keep accuracy:
momentum correction (the accumulation runs on the worker's local velocity), local gradient
clipping, momentum factor masking and a warm-up of the sparsity (75% -> 99.9% over the first
epochs). The paper's tables put DGC's accuracy at or above the uncompressed baseline (ImageNet,
Table 3: ResNet-50 75.96% -> 76.15% top-1 at 277x, AlexNet 58.17% -> 58.20% at 597x; CIFAR-10
ResNet-110, Table 2, on 4 / 8 / 16 / 32 GPUs: baseline 93.75 / 92.92 / 93.14 / 93.10, DGC 93.87
/ 93.28 / 93.20 / 93.18; checked against a stored copy of the ICLR text). The 270-600x range is
the abstract's; "without losing accuracy" gets no tolerance in the paper, so the accuracy range
below (a gap of at most 1 point, the loss of plain Gradient Dropping in Table 2: -1.00 at 4 and
32 GPUs, and Sec. 3.2's "more than 1.0% loss of accuracy on Cifar10" without DGC's corrections)
is pdist's reading, fixed before the runs.

pdist's test, on experiments/compression.py (MNIST-1D, MLP 256-256 with 77k parameters, `ps`
bsp with 4 workers on shared batches of 32, SGD momentum 0.9 at the server, lr 0.05, 600
updates): the uncompressed run against top-k at ratio 0.001 of the whole gradient (77 values a
push; pdist/compression/topk.py, scope global, each value sent with an int32 index: ~500x fewer
bytes by pdist's count, values and indices) with error feedback, i.e. DGC's gradient
accumulation, on the same batches. 3 seeds. What pdist does not have, so does not copy: momentum
correction and momentum factor masking (pdist accumulates plain gradients on the worker and
applies momentum at the server to the averaged sparse gradients: this is Gradient Dropping's
scheme, the baseline DGC improves on), local gradient clipping and the sparsity warm-up (the
ratio is fixed for a run); and the models (a 77k-parameter MLP instead of ResNets, AlexNet,
LSTMs and DeepSpeech). So this tests the weaker algorithm against DGC's claim.

Measured (full mode, 3 seeds): 499x fewer bytes per push (inside 270-600x), and a test accuracy
3.9 +/- 2.0 points below SGD's (gaps 1.5, 3.8, 6.4): a miss of "without losing accuracy". The
accuracy curves show the sparse runs still climbing at 600 updates (their training loss is ~6x
SGD's), which is the slow start DGC's warm-up and momentum correction are meant to fix; neither
exists in pdist, and nothing else was tried (no change after the runs).

Scaled to a 2-core CPU: 6 runs of 600 updates, about a minute (1 minute of CPU).

  python -m pdist.reproduce --only lin2018_dgc
"""

import os

PAPER = ("Lin et al. 2018 (DGC), 99.9% gradient sparsity: 270-600x less traffic without "
         "accuracy loss")
SEEDS = 3
CLAIMS = [
    {"name": "compression_ratio", "claim": "top-0.1% sparsification cuts a worker's push by "
     "270-600x (dense float32 bytes / values + int32 indices sent)",
     "metric": "compression_ratio", "low": 270.0, "high": 600.0,
     "published": "270x to 600x (abstract; 277x ResNet-50, 597x AlexNet, Table 3)"},
    {"name": "accuracy_gap", "claim": "without losing accuracy: test accuracy within 1 point of "
     "uncompressed SGD's (MNIST-1D MLP, 4 workers, same batches)",
     "metric": "eval_accuracy SGD - top-0.1% with accumulation", "low": -1.0, "high": 0.01,
     "published": "no loss: 75.96 -> 76.15% top-1 ResNet-50 (Table 3)"},
]
VARIANTS = (("sgd", []),
            ("topk", ["--config.compression.name=topk", "--config.compression.ratio=0.001"]))


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
                              [f"--config.train.eval_every={every}"],
                              ("bytes_pushed", "eval_accuracy"))
  acc = {name: [s["eval_accuracy"] for s in r] for name, r in runs.items()}
  ratios = [s["compression_ratio"] for s in runs["topk"]]
  out = {"compression_ratio": ratios,
         "accuracy_gap": [s - t for s, t in zip(acc["sgd"], acc["topk"])]}

  os.makedirs(workdir, exist_ok=True)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  colors = {"sgd": "k", "topk": "C0"}
  labels = {"sgd": "SGD (uncompressed)",
            "topk": f"top-0.1% + accumulation ({np.mean(ratios):.0f}x fewer bytes)"}
  for name, runs in curves.items():
    for i, r in enumerate(runs):
      axes[0].plot([b / 1e6 for b, _ in r], [a for _, a in r], "o-", ms=3, color=colors[name],
                   alpha=0.8, label=labels[name] if i == 0 else None)
  axes[0].set_xscale("log")
  axes[0].set(xlabel="bytes pushed by the workers (MB, log)", ylabel="test accuracy",
              title=f"test accuracy against traffic, {seeds} seed(s) each")
  axes[0].legend(fontsize=8, loc="lower right")
  gaps = out["accuracy_gap"]
  axes[1].scatter(range(seeds), [100 * g for g in gaps], color="C0", zorder=3,
                  label="pdist, per seed")
  axes[1].axhspan(-100, 1.0, color="gray", alpha=0.2, label="'without losing accuracy' (< 1 point)")
  axes[1].axhline(0.0, color="k", lw=0.8)
  axes[1].axhline(-0.19, color="C2", ls="--", label="paper, ResNet-50: -0.19 (Table 3)")
  axes[1].set_ylim(min(-2.0, 100 * min(gaps) - 0.5), max(3.0, 100 * max(gaps) + 0.5))
  axes[1].set_xlim(-0.5, seeds - 0.5)
  axes[1].set_xticks(range(seeds), [f"seed {s}" for s in range(seeds)])
  axes[1].set(ylabel="test accuracy gap, SGD - DGC-style (points)",
              title="accuracy lost to 99.9% sparsity")
  axes[1].legend(fontsize=8, loc="lower right")
  fig.suptitle("Deep Gradient Compression's 0.1% top-k, scaled: MNIST-1D MLP, ps bsp, 4 workers",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "figure.png"), dpi=110)
  plt.close(fig)
  return out
