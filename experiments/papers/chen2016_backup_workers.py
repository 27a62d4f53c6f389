"""Chen, Pan, Monga, Bengio & Jozefowicz, "Revisiting distributed synchronous SGD"
(arXiv:1604.00981, 2016): with backup workers, synchronous SGD stops waiting for stragglers —
the server runs N + b workers, applies the first N gradients of each round and drops the
other b.

The claim (Sec. 3 and its Inception / PixelCNN experiments, Sec. 4): because a round ends when
the N-th gradient arrives instead of the slowest one, N + b workers complete rounds faster and
reach a given test precision sooner than plain synchronous SGD (and than async SGD). Its numbers
are wall-clock measurements of its cluster's latency distribution (Fig. 3: the time for the
N-th of N + b gradients to arrive against the last) and Inception test precision against time;
no number here is quoted from them: pdist's stragglers are a fixed factor, not the paper's
measured latencies, so the paper's speedups do not transfer.

pdist's test, experiments/stragglers.py: 10 workers on MNIST-1D (MLP 128-128, SGD lr 0.05,
batch 32 each), one of them 5x slower than the others, 50 units of simulated time, 3 seeds:
bsp with one backup worker (the server applies the first 9 gradients of a round) against plain
bsp (every round waits for the straggler). Per seed: the ratio of rounds completed per unit of
simulated time (5x exactly: a round takes 1 unit against 5; bookkeeping that checks the
simulation did what it was asked), and the difference in test accuracy both reach at t = 50.
Scaled to this machine: the workers are emulated in one process with simulated time (pdist's
ps simulator), not a cluster; the paper's Inception / ImageNet model is an MLP on MNIST-1D.

  python -m pdist.reproduce --only chen2016_backup_workers
"""

import os

PAPER = "Chen et al. 2016, backup workers for synchronous SGD"
SEEDS = 3
CLAIMS = [
    {"name": "rounds_ratio", "claim": "one backup worker completes 5x the rounds of plain bsp in "
     "the same simulated time (bookkeeping: set by the 5x straggler)",
     "metric": "updates ratio", "low": 4.5, "high": 5.5,
     "published": "— (no straggler-factor number; Fig. 3 measures its cluster's latencies)"},
    {"name": "accuracy_gain", "claim": "and reaches a higher test accuracy in that time",
     "metric": "eval_accuracy difference", "low": 0.0, "high": 1.0,
     "published": "qualitative: N + b reaches higher precision sooner (Sec. 4, Inception)"},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  spec = os.path.join(root, "experiments", "stragglers.py")
  time = 10 if tiny else 50
  ratios, gains = [], []
  curves = {}
  for seed in range(1 if tiny else SEEDS):   # tiny: one seed (seconds, for tests)
    runs = {}
    for name, steps, backup, every in (("bsp", time // 5, 0, 1), ("backup", time, 1, 5)):
      config = config_lib.load(spec + (":tiny" if tiny else ""), [
          "--config.ps.consistency=bsp", f"--config.ps.backup_workers={backup}",
          f"--config.train.steps={steps}", f"--config.train.log_every={every}",
          f"--config.train.eval_every={every}", f"--config.train.seed={seed}",
          "--config.train.progress=False", "--config.train.tensorboard=False",
          "--config.checkpoint.every=0"])
      result = train.run(config, os.path.join(workdir, f"{name}_{seed}"))
      runs[name] = result.summary
      curves[(name, seed)] = [(r["sim_time"], r["eval_accuracy"]) for r in result.rows
                              if "eval_accuracy" in r and "sim_time" in r]
    ratios.append((runs["backup"]["step"] / runs["backup"]["sim_time"])
                  / (runs["bsp"]["step"] / runs["bsp"]["sim_time"]))
    gains.append(runs["backup"]["eval_accuracy"] - runs["bsp"]["eval_accuracy"])

  os.makedirs(workdir, exist_ok=True)
  fig, ax = plt.subplots(figsize=(8, 4.6))
  for (name, seed), points in curves.items():
    color = "C0" if name == "backup" else "C3"
    label = None
    if seed == 0:
      label = ("bsp + 1 backup worker (first 9 of 10)" if name == "backup"
               else "plain bsp (waits for the 5x straggler)")
    ax.plot([t for t, _ in points], [a for _, a in points], "o-", ms=3, color=color,
            alpha=0.8, label=label)
  ax.set(xlabel="simulated time (units; a normal worker's gradient takes 1)",
         ylabel="test accuracy",
         title=f"Backup workers (Chen et al. 2016): 10 workers, one 5x slower, "
               f"{len(ratios)} seeds\n"
               f"rounds ratio {sum(ratios) / len(ratios):.2f}x, accuracy gain "
               f"{sum(gains) / len(gains):+.3f} at t = {time}")
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "figure.png"), dpi=110)
  plt.close(fig)
  return {"rounds_ratio": ratios, "accuracy_gain": gains}
