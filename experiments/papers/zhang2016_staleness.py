"""Zhang, Gupta, Lian & Liu, "Staleness-aware async-SGD for distributed deep learning" (IJCAI
2016; arXiv:1511.05950).

The claim (abstract and Sec. 3): with many asynchronous learners, gradients arrive computed on
parameters several updates old (staleness sigma), and dividing the learning rate by the
gradient's staleness, alpha = alpha0 / sigma, keeps async SGD converging where the unmodulated
alpha0 fails; the paper proves an O(1 / sqrt(T)) rate for the modulated rule and shows it on
CIFAR10 and ImageNet (its Sec. 5 figures and tables of test error against epochs, learners and
softsync settings). No number is checked here: its experiments are test errors of CIFAR10 and
ImageNet networks, and their text could not be retrieved from a stored copy here. Its most
asynchronous CIFAR10 setting, as I recall it, is lambda = 30 learners with mini-batches of
mu = 4 each under 30-softsync (a gradient applied as soon as it arrives), which is what is run
here.

pdist's test, experiments/least_squares.py (y = <w, x> + 0.1 noise, x ~ N(0, I) in R^100, 4000
training examples, a linear model, so the training loss's exact optimum is known and
`excess_loss` = training loss - optimum): a parameter server with the paper's lambda = 30 async
workers (`ps`, consistency `async`: every gradient is applied on arrival, ~29 versions stale),
mu = 4 examples a worker, plain SGD at alpha0 = 0.05 (least_squares.py's one-worker rate),
3 seeds. Claims:
- with alpha0 / staleness (`ps.staleness_lr=inverse`) the run converges: excess loss below 1e-3
  after 6000 updates. The threshold is pdist's reading of "converges" (the noise floor of one
  worker at alpha0 is ~5e-3 at batch 16, README), not a number from the paper.
- with the plain alpha0 the run diverges, judged as pdist flags it: the loss becomes non-finite,
  training stops and summary.json says `status: diverged` (train.Diverged). Per seed 1 if the
  run was flagged diverged, else 0; the claim needs all seeds flagged (mean 1).
Scaled to this machine: the paper's CIFAR10 network (and ImageNet's) is replaced by a convex
least-squares model, where convergence can be measured against the exact optimum; the learners
are emulated in one process (pdist's ps simulator), not 30 machines. The previous version of this
file ran 16 workers with batch 16 and judged "diverges" as an excess loss > 1.

  python -m pdist.reproduce --only zhang2016_staleness
"""

import os

PAPER = "Zhang et al. 2016, staleness-aware learning rate for async SGD (30 learners, mu = 4)"
SEEDS = 3
WORKERS, BATCH, STEPS = 30, 4, 6000
CLAIMS = [
    {"name": "inverse_converges", "claim": "30 async workers (mini-batch 4 each) with lr / "
     "staleness converge to the least-squares optimum (excess loss < 1e-3)",
     "metric": "excess_loss", "low": 0.0, "high": 1e-3,
     "published": "qualitative: alpha0 / staleness converges (Sec. 3 theorem; Sec. 5 CIFAR10)"},
    {"name": "plain_diverges", "claim": "the same workers at the plain lr diverge: the run is "
     "flagged diverged (non-finite loss, status diverged)", "metric": "fraction of runs "
     "flagged diverged", "low": 1.0, "high": 1.0,
     "published": "qualitative: unmodulated alpha0 fails at high staleness (Sec. 5)"},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from pdist import metrics

  spec = os.path.join(root, "experiments", "least_squares.py")
  steps = 60 if tiny else STEPS
  every = steps // (3 if tiny else 30)
  out = {claim["name"]: [] for claim in CLAIMS}
  curves = {}
  for name, preset in (("inverse_converges", "inverse"), ("plain_diverges", "async")):
    for seed in range(1 if tiny else SEEDS):   # tiny: one seed (seconds, for tests)
      config = config_lib.load(f"{spec}:{preset}" + (",tiny" if tiny else ""), [
          f"--config.ps.workers={WORKERS}", f"--config.data.batch_size={BATCH}",
          f"--config.train.steps={steps}", f"--config.train.eval_every={every}",
          f"--config.train.log_every={every}", f"--config.train.seed={seed}",
          "--config.train.progress=False", "--config.train.tensorboard=False",
          "--config.checkpoint.every=0"])
      run_dir = os.path.join(workdir, f"{name}_{seed}")
      try:
        summary = train.run(config, run_dir).summary
      except train.Diverged as e:
        summary = e.summary
      if name == "inverse_converges":
        out[name].append(summary["excess_loss"])
      else:
        out[name].append(1.0 if summary.get("status") == "diverged" else 0.0)
      rows = [r for r in metrics.read(run_dir) if "excess_loss" in r]
      curves[(name, seed)] = ([r["step"] for r in rows], [r["excess_loss"] for r in rows],
                              summary.get("diverged_at"))

  os.makedirs(workdir, exist_ok=True)
  fig, ax = plt.subplots(figsize=(8, 4.6))
  for (name, seed), (x, y, diverged_at) in curves.items():
    color = "C0" if name == "inverse_converges" else "C3"
    label = None
    if seed == 0:
      label = ("lr / staleness" if color == "C0" else "plain lr") + f", {WORKERS} async workers"
    ax.plot(x, y, color=color, alpha=0.8, label=label)
    if diverged_at is not None:
      ax.axvline(diverged_at, color=color, ls=":", lw=1,
                 label="flagged diverged (non-finite loss)" if seed == 0 else None)
  ax.axhline(1e-3, color="gray", ls="--", lw=1, label="converged: excess loss < 1e-3")
  ax.set_yscale("log")
  ax.set(xlabel="update", ylabel="excess training loss over the optimum",
         title=f"Staleness-aware lr (Zhang et al. 2016): {WORKERS} workers, batch {BATCH}, "
               f"{len(out['plain_diverges'])} seeds")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "figure.png"), dpi=110)
  plt.close(fig)
  return out
