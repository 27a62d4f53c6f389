"""Greydanus & Kobak, "Scaling down deep learning with MNIST-1D" (2020; ICML 2024), Table of
baselines: test accuracy of logistic regression ~32%, MLP ~68%, CNN ~94% on MNIST-1D (4000/1000).

pdist trains each with experiments/mnist1d.py (MLP 8000 updates, CNN 3000, linear = logistic
regression with the MLP's recipe), 3 seeds as one vmapped program. Expected ranges are the
published numbers widened by the spread pdist measures over seeds (CNN 0.85-0.90 here).

  python -m pdist.reproduce --only greydanus2020_mnist1d
"""

import os

PAPER = "Greydanus & Kobak 2020, MNIST-1D baselines (logistic 32%, MLP 68%, CNN 94%)"
SEEDS = 3
CLAIMS = [
    {"name": "logistic", "claim": "logistic regression reaches ~32% test accuracy",
     "metric": "eval_accuracy", "low": 0.28, "high": 0.38},
    {"name": "mlp", "claim": "an MLP reaches ~65-68% test accuracy",
     "metric": "eval_accuracy", "low": 0.60, "high": 0.72},
    {"name": "cnn", "claim": "a 1-D CNN reaches ~92-94% test accuracy (pdist: 0.85-0.90)",
     "metric": "eval_accuracy", "low": 0.84, "high": 0.95},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  """{claim name: [per-seed values]}."""
  spec = os.path.join(root, "experiments", "mnist1d.py")
  out = {}
  for name, preset, extra in (("logistic", "mlp", ["--config.model.name=linear"]),
                              ("mlp", "mlp", []), ("cnn", "cnn", [])):
    overrides = [f"--config.train.seeds={SEEDS}", "--config.train.progress=False", *extra]
    config = config_lib.load(f"{spec}:{preset}" + (",tiny" if tiny else ""), overrides)
    summary = train.run(config, os.path.join(workdir, name)).summary
    out[name] = summary["eval_accuracy_seeds"]
  return out
