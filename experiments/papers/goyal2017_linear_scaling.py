"""Goyal et al., "Accurate, large minibatch SGD: training ImageNet in 1 hour" (2017): with the
linear scaling rule (lr x k for a k-times larger batch) and a warmup, a large batch matches the
small batch's accuracy after the same number of epochs; without scaling it falls behind.

experiments/large_batch.py on MNIST-1D (MLP, 30 epochs), run as `single` (the same math as `sync`)
with 3 seeds vmapped: batch 32 at lr 0.01 against batch 256 at lr 0.08 with warmup, and batch 256
at lr 0.01.

  python -m pdist.reproduce --only goyal2017_linear_scaling
"""

import os

PAPER = "Goyal et al. 2017, linear scaling rule with warmup"
SEEDS = 3
CLAIMS = [
    {"name": "scaled_matches", "claim": "batch 256 with lr x8 and warmup is within 3 points of "
     "batch 32 after 30 epochs", "metric": "eval_accuracy gap", "low": -0.03, "high": 0.03},
    {"name": "unscaled_lags", "claim": "batch 256 at the small-batch lr lags by over 5 points",
     "metric": "eval_accuracy gap", "low": 0.05, "high": 1.0},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  spec = os.path.join(root, "experiments", "large_batch.py") + (":tiny" if tiny else "")
  accuracy = {}
  for name, fields in config_lib.call_experiment(spec, "get_hyper"):
    overrides = ["--config.strategy=single", f"--config.train.seeds={SEEDS}",
                 "--config.train.progress=False"]
    overrides += [f"--config.{k}={v}" for k, v in fields.items()]
    summary = train.run(config_lib.load(spec, overrides), os.path.join(workdir, name)).summary
    accuracy[name] = summary["eval_accuracy_seeds"]
  small = accuracy["small"]
  return {"scaled_matches": [a - b for a, b in zip(small, accuracy["large_scaled"])],
          "unscaled_lags": [a - b for a, b in zip(small, accuracy["large"])]}
