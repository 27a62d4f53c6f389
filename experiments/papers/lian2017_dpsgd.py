"""Lian, Zhang, Zhang, Hsieh, Zhang & Liu, "Can Decentralized Algorithms Outperform Centralized
Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient Descent" (NeurIPS 2017;
arXiv:1705.09056).

The claims, from the abstract: D-PSGD "has comparable total computational complexities to C-PSGD
but requires much less communication cost on the busiest node", and "on network configurations
with low bandwidth or high latency, D-PSGD can be up to one order of magnitude faster than its
well-optimized centralized counterparts" (experiments in CNTK and Torch on up to 112 GPUs). The
complexity claim is a theorem (Theorem 1 / Corollary 2: for a non-convex L-smooth f, the average
of the n nodes' models reaches the O(1/sqrt(nK)) rate of centralized mini-batch SGD once the K
updates are many enough for the graph's spectral gap); the experiments show it as training-loss
curves against epochs, D-PSGD beside centralized SGD. I could not retrieve numbers for those
curves, so the first two ranges below are pdist's reading of "converges like centralized SGD at
the same number of gradients" (fixed before the runs, not taken from the paper or from pdist's
output); the third is the abstract's "up to one order of magnitude faster".

The paper's recipe: n nodes on a ring, each keeping its own model x_i, taking a stochastic
gradient of its own mini-batch and averaging with its two neighbours through a symmetric doubly
stochastic W, x_{k+1} = x_k W - gamma dF(x_k; xi_k); the evaluated model is the nodes' average.
pdist's `gossip` (experiments/gossip.py) mixes after the local step (adapt then combine:
x_{k+1} = (x_k - gamma dF(x_k; xi_k)) W) with weights 1/3 on the ring, and evaluates the
replicas' mean.

Scaled to a 2-core CPU: MNIST-1D and the MLP of experiments/gossip.py (128, 128; SGD lr 0.05,
momentum 0.9; 8 replicas on 8 emulated CPU devices, a global batch of 128 = 16 per replica; 3000
updates, 96 epochs) instead of ResNet-20-class models on GPUs. `ring` against `sync` (the
all-reduce: centralized mini-batch SGD on the same examples), 3 seeds each, about a minute in
all. The speed claim uses pdist's network model (pdist/network.py, experiments/gossip.py's
`slow` network: 100 Mbit/s, 50 ms a message, 10 ms compute an update), so it is arithmetic on
the model's bytes, not a measured wall time: a ring exchange is 2 messages of the model, the ring
all-reduce 2 (n - 1) = 14 messages of 1/8 of it.

  python -m pdist.reproduce --only lian2017_dpsgd
"""

import os

PAPER = "Lian et al. 2017, D-PSGD on a ring converges like centralized SGD"
SEEDS = 3
CLAIMS = [
    {"name": "accuracy_gap", "published": "comparable to C-PSGD (Fig. 2-3; no table number)", "claim": "D-PSGD on a ring of 8 reaches the test accuracy of "
     "all-reduce SGD at the same gradients (within 2 points)",
     "metric": "eval_accuracy sync - ring", "low": -0.02, "high": 0.02},
    {"name": "train_loss_ratio", "published": "same convergence rate (Theorem 1)", "claim": "and its training loss (the replicas' mean model, whole "
     "training set)", "metric": "train_eval_loss ratio ring / sync", "low": 0.8, "high": 1.25},
    {"name": "time_speedup", "published": "up to 10x faster on slow networks (abstract)", "claim": "on a slow, high-latency network it is faster, up to 10x, "
     "per update (arithmetic of pdist's network model, not a measurement)", "metric": "sim_time ratio sync / ring",
     "low": 1.0, "high": 10.0},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  """{claim name: [per-seed values]}."""
  spec = os.path.join(root, "experiments", "gossip.py")
  out = {claim["name"]: [] for claim in CLAIMS}
  for seed in range(SEEDS):
    runs = {}
    for name in ("sync", "ring"):
      config = config_lib.load(f"{spec}:{name},slow" + (",tiny" if tiny else ""), [
          "--config.train.eval_train=True", "--config.train.eval_every=0",
          f"--config.train.seed={seed}", "--config.train.progress=False",
          "--config.train.tensorboard=False"])
      runs[name] = train.run(config, os.path.join(workdir, f"{name}_{seed}")).summary
    sync, ring = runs["sync"], runs["ring"]
    out["accuracy_gap"].append(sync["eval_accuracy"] - ring["eval_accuracy"])
    out["train_loss_ratio"].append(ring["train_eval_loss"] / sync["train_eval_loss"])
    out["time_speedup"].append(sync["sim_time"] / ring["sim_time"])
  from pdist.reproduce import claims_figure
  claims_figure(out, CLAIMS, os.path.join(workdir, "figure.png"), PAPER)
  return out
