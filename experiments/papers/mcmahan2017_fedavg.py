"""McMahan, Moore, Ramage, Hampson & Aguera y Arcas, "Communication-Efficient Learning of Deep
Networks from Decentralized Data" (AISTATS 2017; arXiv:1602.05629).

The claim, from the abstract: "we show a reduction in required communication rounds by 10-100x as
compared to synchronized stochastic gradient descent", and (Sec. 3) the gain is smaller but
still there on pathological non-IID clients. The numbers, Table 2 (MNIST CNN, 100 clients, C =
0.1, rounds to 99% test accuracy; FedSGD = E 1, B infinite: 626 rounds IID, 483 non-IID; each
FedAvg row's speedup over it, u = E n / B local updates a round; checked against a stored copy of
the AISTATS text, which corrected the E 5, B inf non-IID entry from 0.6x to 0.5x, 1000 rounds):

  E 5, B inf (u 5)   3.5x IID  0.5x non-IID      E 5, B 50 (u 60)    21.6x  1.4x
  E 1, B 50 (u 12)   9.6x      0.8x              E 20, B 50 (u 240)  19.6x  1.1x
  E 20, B inf (u 20) 2.7x      0.7x              E 5, B 10 (u 300)   31.3x  2.1x
  E 1, B 10 (u 60)   18.4x     1.4x              E 20, B 10 (u 1200) 34.8x  2.8x

The acceptance ranges are the table's spans: IID speedups 2.7x-34.8x, non-IID 0.5x-2.8x, and
the per-row ratio of the two (IID speedup over non-IID speedup) 3.9x-17.8x.

pdist's test, experiments/fedavg.py as it is: sklearn digits (1400 training images over 100
clients of 14, the paper's IID shards and `label`: two label-sorted shards a client, the paper's
pathological non-IID split), 10 clients a round, an MLP 64-32-10 (the paper's CNN: 1.6M
parameters on MNIST); FedAvg E = 5, B = 10, client lr 0.05 (u = 7 local updates a round against
the paper's 300 for this E and B: its clients hold 600 examples, these 14) against FedSGD (the
`fedsgd` preset: one full-batch step a client, lr 0.5), 300 rounds, test accuracy every 2 rounds
on 300 held-out images. The target is 90% (the rounds-to-target of fedavg.py's sweep, fixed
before these runs): final accuracies here are 0.95-0.97, so 90% stands where the paper's 99%
stands for its CNN (99.2%+), below the plateau. A run that never reaches it counts as 300 + 2
rounds (a censored value; none of the full runs needed it). 3 seeds, 12 runs, about a minute.

Known from the README (one seed, eval every 10): FedAvg 20 / FedSGD 50 rounds to 90% IID, 60 / 70
label-skewed, and at 95% FedSGD (50) is ahead of FedAvg (80) on IID clients: with u = 7 local
steps this small problem is far from the paper's regime of hundreds of local updates.

Result (first full run, 3 seeds): this scale MISSES the IID claim and the IID / non-IID ratio.
Rounds to 90% (mean): FedAvg 24 / FedSGD 31 IID, 56 / 43 label-skewed; speedups 1.33 +- 0.17 IID
(paper: >= 2.7), 0.77 +- 0.10 non-IID (in the paper's 0.5-2.8), ratio 1.75 +- 0.27 (paper:
>= 3.9). The direction holds (FedAvg ahead on IID clients, the gain gone on label shards), the
size does not: FedSGD with a tuned lr of 0.5 on 14-example clients is a strong baseline and FedAvg
gets 7 local updates a round, against the paper's 300 at the same E and B (its Table 2 rows with u
= 5 and 12 give 3.5x and 9.6x). Nothing was changed after the run.

  python -m pdist.reproduce --only mcmahan2017_fedavg
"""

import os

PAPER = "McMahan et al. 2017, FedAvg needs fewer rounds than FedSGD, more so on IID clients"
SEEDS = 3
TARGET = 0.90
EVAL_EVERY = 2
CLAIMS = [
    {"name": "speedup_iid", "claim": "FedAvg (E 5, B 10) reaches 90% test accuracy in fewer "
     "rounds than FedSGD on IID clients", "metric": "rounds to 90% FedSGD / FedAvg, IID",
     "low": 2.7, "high": 34.8, "published": "2.7x-34.8x, 31.3x at E 5 B 10 (Table 2, CNN)"},
    {"name": "speedup_noniid", "claim": "and on pathological non-IID clients (two label shards "
     "each)", "metric": "rounds to 90% FedSGD / FedAvg, label shards",
     "low": 0.5, "high": 2.8, "published": "0.5x-2.8x, 2.1x at E 5 B 10 (Table 2, CNN)"},
    {"name": "iid_over_noniid", "claim": "the speedup is larger on IID than on non-IID clients",
     "metric": "speedup IID / speedup non-IID", "low": 3.9, "high": 17.8,
     "published": "3.9x-17.8x per row, 14.9x at E 5 B 10 (Table 2, CNN)"},
]


def _rounds_to(rows, target, steps):
  for row in rows:
    if row.get("eval_accuracy", 0.0) >= target:
      return row["step"]
  return steps + EVAL_EVERY   # censored: never reached


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  """{claim name: [per-seed values]}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  spec = os.path.join(root, "experiments", "fedavg.py")
  out = {claim["name"]: [] for claim in CLAIMS}
  rounds = {}
  curves = {}
  seeds = 1 if tiny else SEEDS   # tiny: one seed (a check of the machinery)
  for seed in range(seeds):
    for name, presets in (("fedavg_iid", []), ("fedsgd_iid", ["fedsgd"]),
                          ("fedavg_label", ["label"]), ("fedsgd_label", ["fedsgd", "label"])):
      presets = ",".join(presets + (["tiny"] if tiny else []))
      config = config_lib.load(spec + (f":{presets}" if presets else ""), [
          f"--config.train.seed={seed}", "--config.train.progress=False",
          "--config.train.tensorboard=False"] + ([] if tiny else [
              f"--config.train.eval_every={EVAL_EVERY}", f"--config.train.log_every={EVAL_EVERY}"]))
      rows = train.run(config, os.path.join(workdir, f"{name}_{seed}")).rows
      rounds.setdefault(name, []).append(_rounds_to(rows, TARGET, config.train.steps))
      curves.setdefault(name, []).append([(r["step"], r["eval_accuracy"]) for r in rows
                                          if "eval_accuracy" in r])
    iid = rounds["fedsgd_iid"][-1] / rounds["fedavg_iid"][-1]
    label = rounds["fedsgd_label"][-1] / rounds["fedavg_label"][-1]
    out["speedup_iid"].append(iid)
    out["speedup_noniid"].append(label)
    out["iid_over_noniid"].append(iid / label)

  os.makedirs(workdir, exist_ok=True)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = {"fedavg_iid": ("C0", "-"), "fedsgd_iid": ("C0", ":"),
            "fedavg_label": ("C3", "-"), "fedsgd_label": ("C3", ":")}
  for name, runs in curves.items():
    steps = [s for s, _ in runs[0]]
    acc = np.array([[a for _, a in r] for r in runs])
    color, ls = styles[name]
    axes[0].plot(steps, acc.mean(0), ls, color=color,
                 label=f"{name.replace('_', ', ')}: {np.mean(rounds[name]):.0f} rounds to 90%")
  axes[0].axhline(TARGET, color="gray", lw=0.8, ls="--", label=f"target {TARGET:.0%}")
  axes[0].set(xlabel="round", ylabel="test accuracy", ylim=(0.5, 1.0),
              title=f"test accuracy (mean of {seeds} seeds)")
  axes[0].legend(fontsize=8, loc="lower right")
  for i, (key, low, high) in enumerate((("speedup_iid", 2.7, 34.8),
                                        ("speedup_noniid", 0.5, 2.8))):
    axes[1].scatter([i] * seeds, out[key], color="C0", zorder=3,
                    label="pdist (per seed)" if i == 0 else None)
    axes[1].fill_between([i - 0.3, i + 0.3], low, high, color="gray", alpha=0.25,
                         label="paper's Table 2 span" if i == 0 else None)
  axes[1].scatter([0, 1], [31.3, 2.1], marker="x", color="k", zorder=3,
                  label="paper, E 5 B 10 (u 300)")
  axes[1].axhline(1.0, color="gray", lw=0.8)
  axes[1].set_yscale("log")
  axes[1].set_xticks([0, 1], ["IID", "non-IID (label shards)"])
  axes[1].set(ylabel="rounds to 90%: FedSGD / FedAvg", title="FedAvg's speedup over FedSGD")
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "figure.png"), dpi=110)
  plt.close(fig)
  return out
