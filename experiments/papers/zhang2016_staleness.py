"""Zhang, Gupta, Lian & Liu, "Staleness-aware async-SGD for distributed deep learning" (IJCAI
2016): dividing the learning rate by the gradient's staleness lets asynchronous SGD with many
workers converge where the same learning rate diverges.

On least squares (experiments/least_squares.py: 100 dimensions, exact optimum known), 16 async
workers, lr 0.05, 2000 updates, 3 seeds: the excess loss over the optimum with lr / staleness, and
with the plain lr.

  python -m pdist.reproduce --only zhang2016_staleness
"""

import os

PAPER = "Zhang et al. 2016, staleness-aware learning rate for async SGD"
SEEDS = 3
CLAIMS = [
    {"name": "inverse_converges", "claim": "16 async workers with lr / staleness reach the optimum "
     "(excess loss < 1e-3)", "metric": "excess_loss", "low": 0.0, "high": 1e-3},
    {"name": "plain_diverges", "claim": "the same workers at the plain lr diverge (excess loss "
     "> 1)", "metric": "excess_loss", "low": 1.0, "high": float("inf")},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  spec = os.path.join(root, "experiments", "least_squares.py")
  out = {}
  for name, preset in (("inverse_converges", "inverse"), ("plain_diverges", "async")):
    values = []
    for seed in range(SEEDS):
      config = config_lib.load(f"{spec}:{preset}" + (",tiny" if tiny else ""),
                               [f"--config.train.seed={seed}", "--config.train.progress=False"])
      summary = train.run(config, os.path.join(workdir, f"{name}_{seed}")).summary
      values.append(summary["excess_loss"])
    out[name] = values
  return out
