"""Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (NIPS 2014 Deep Learning
Workshop; arXiv:1503.02531).

The claim (Sec. 3, "Preliminary experiments on MNIST", p. 3-4): a large net (two hidden layers of
1200 ReLUs, dropout, jittered inputs) makes 67 test errors on MNIST; a smaller net (two hidden
layers of 800 ReLUs, no regularisation) trained on the labels makes 146; "if the smaller net was
regularized solely by adding the additional task of matching the soft targets produced by the
large net at a temperature of 20, it achieved 74 test errors". So the distilled student's errors
are 74 / 146 = 0.51 of the scratch student's, and it recovers (146 - 74) / (146 - 67) = 91% of
the teacher's advantage. On speech (Sec. 4, Table 1, p. 5) the distilled model recovers "more than
80%" of the 10-model ensemble's frame-accuracy gain (58.9% -> 60.8% of 61.1%: 86%). The ranges
below: the distilled student makes fewer errors (ratio in [0, 1], published 0.51), and it
recovers the paper's "more than 80%" of the teacher's gain ([0.8, 1]; 91% MNIST, 86% speech).

The paper's recipe: soft targets at a high temperature (T = 20 on MNIST), loss a weighted
average of the soft-target cross-entropy (scaled by T^2) and the hard-label cross-entropy, the
transfer set the teacher's training set. pdist (experiments/distill.py as it is, but half the
steps): the teacher is experiments/mnist1d.py's 1-D CNN (`cnn` preset, 2000 updates instead of
3000: test accuracy ~0.885 against 0.90), trained once inside run() (seed 0; a distillation
teacher is one model); the student the MLP 256-256 (Adam 1e-3, batch 100, 4000 updates instead of
8000: both students have stopped improving by then), on the 4000 MNIST-1D training signals, at
T = 4, weight 0.5 on the soft term; the same student on the labels alone (`labels` preset).
3 student seeds each as one vmapped program (`train.seeds=3`). Scaled: MNIST-1D's 4000 examples
for MNIST's 60000, a CNN teacher (better by its convolutional inductive bias, as the paper's by
dropout and jitter) for a larger MLP.

What was tried before fixing this recipe (one teacher of 2000 updates, test accuracy 0.885;
3 student seeds each, 4000 updates): labels 0.646; T 4, weight 0.5: 0.709; T 20 (the paper's),
weight 0.9: 0.703; T 4, weight 0.9: 0.700. The README's T sweep (2, 4, 8) agrees. The student
recovers about a quarter of the teacher's advantage, not 80%: an MLP cannot imitate the CNN's
translation invariance from soft targets on the 4000 training signals alone (the teacher fits
them exactly, so its soft targets there carry little beyond the labels; the paper's MLP teacher
and student share an architecture family).

Measured (first full run, 2.3 minutes wall on the shared 2 cores, load ~11): teacher 0.885;
students on labels 0.640 / 0.657 / 0.642, distilled 0.705 / 0.712 / 0.709 (seeds 0-2). Error
ratio 0.824 +- 0.011 (pass: fewer errors, though the paper's 0.51 is far lower); share of the
teacher's advantage recovered 0.26 +- 0.01 (miss: the paper's 80-91%).

  python -m pdist.reproduce --only hinton2015_distillation
"""

import os

PAPER = "Hinton, Vinyals & Dean 2015, a distilled student beats the same student on labels"
SEEDS = 3
CLAIMS = [
    {"name": "error_ratio", "claim": "the MLP student distilled from the CNN makes fewer test "
     "errors than the same MLP trained on the labels", "metric": "test errors distilled / scratch",
     "low": 0.0, "high": 1.0, "published": "74 / 146 = 0.51 (MNIST, Sec. 3, p. 4)"},
    {"name": "gain_recovered", "claim": "it recovers more than 80% of the teacher's advantage "
     "over the scratch student", "metric": "(acc distilled - scratch) / (teacher - scratch)",
     "low": 0.8, "high": 1.0,
     "published": "91% MNIST (Sec. 3); >80%, 86% speech (Sec. 4, Table 1, p. 5)"},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  """{claim name: [per-seed values]}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  common = ["--config.train.progress=False", "--config.train.tensorboard=False",
            "--config.checkpoint.every=0"]
  teacher_dir = os.path.join(workdir, "teacher")
  config = config_lib.load(os.path.join(root, "experiments", "mnist1d.py") + (
      ":cnn,tiny" if tiny else ":cnn"), common + ["--config.train.save_params=True"] + (
          [] if tiny else ["--config.train.steps=2000"]))
  teacher = train.run(config, teacher_dir).summary["eval_accuracy"]

  spec = os.path.join(root, "experiments", "distill.py")
  students = [f"--config.train.seeds={SEEDS}"] + ([] if tiny else ["--config.train.steps=4000"])
  acc = {}
  for name, preset, extra in (
      ("scratch", "labels", []),
      ("distilled", "", [f"--config.distill.teacher={teacher_dir}",
                         "--config.distill.temperature=4.0", "--config.distill.weight=0.5"])):
    preset = ",".join(p for p in (preset, "tiny" if tiny else "") if p)
    config = config_lib.load(spec + (f":{preset}" if preset else ""), common + students + extra)
    acc[name] = np.array(train.run(config, os.path.join(workdir, name)).summary[
        "eval_accuracy_seeds"])
  scratch, distilled = acc["scratch"], acc["distilled"]
  gap = teacher - scratch   # (guarded: tiny runs can tie)
  out = {"error_ratio": list((1 - distilled) / np.maximum(1 - scratch, 1e-3)),
         "gain_recovered": list((distilled - scratch) / np.where(gap == 0, 1e-3, gap))}
  out = {k: [float(x) for x in v] for k, v in out.items()}

  os.makedirs(workdir, exist_ok=True)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  # test errors relative to the scratch student (= 1), pdist's per seed against the paper's
  rel = {"teacher": (1 - teacher) / (1 - scratch), "distilled student": np.array(
      out["error_ratio"]), "scratch student": np.ones(SEEDS)}
  paper = {"teacher": 67 / 146, "distilled student": 74 / 146, "scratch student": 1.0}
  for i, (name, values) in enumerate(rel.items()):
    axes[0].bar(i, np.mean(values), color="C0", alpha=0.6,
                label="pdist (mean; dots: seeds)" if i == 0 else None)
    axes[0].scatter([i] * SEEDS, values, color="C0", s=14, zorder=3)
    axes[0].scatter(i, paper[name], marker="x", color="k", s=60, zorder=4,
                    label="paper (MNIST: 67, 74, 146 errors)" if i == 0 else None)
  axes[0].set_xticks(range(3), list(rel))
  axes[0].set(ylabel="test errors / scratch student's", ylim=(0, 1.25),
              title=f"MNIST-1D: CNN teacher ({teacher:.3f}), MLP students")
  axes[0].legend(fontsize=8, loc="upper left")
  axes[1].scatter(range(SEEDS), out["gain_recovered"], color="C0", zorder=3,
                  label="pdist (per seed)")
  axes[1].axhspan(0.8, 1.0, color="gray", alpha=0.25, label="paper: more than 80%")
  axes[1].axhline(72 / 79, color="k", lw=0.8, ls="--", label="paper, MNIST: 91%")
  axes[1].set_xticks(range(SEEDS), [f"seed {s}" for s in range(SEEDS)])
  axes[1].set(ylabel="(distilled - scratch) / (teacher - scratch)", ylim=(-0.1, 1.1),
              title="share of the teacher's advantage recovered")
  axes[1].legend(fontsize=8, loc="center right")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "figure.png"), dpi=110)
  plt.close(fig)
  return out
