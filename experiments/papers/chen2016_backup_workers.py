"""Chen, Pan, Monga, Bengio & Jozefowicz, "Revisiting distributed synchronous SGD" (2016): with
backup workers, synchronous SGD stops waiting for stragglers — the server applies the first N - b
gradients of each round and drops the rest.

experiments/stragglers.py: 10 workers, one 5x slower, 50 units of simulated time, 3 seeds: rounds
completed with one backup worker against plain bsp (the straggler sets the pace: 5 units a round
against 1), and the test accuracy both reach in the same time.

  python -m pdist.reproduce --only chen2016_backup_workers
"""

import os

PAPER = "Chen et al. 2016, backup workers for synchronous SGD"
SEEDS = 3
CLAIMS = [
    {"name": "rounds_ratio", "claim": "one backup worker completes 5x the rounds of plain bsp in "
     "the same simulated time", "metric": "updates ratio", "low": 4.5, "high": 5.5},
    {"name": "accuracy_gain", "claim": "and reaches a higher test accuracy in that time",
     "metric": "eval_accuracy difference", "low": 0.0, "high": 1.0},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  spec = os.path.join(root, "experiments", "stragglers.py")
  time = 10 if tiny else 50
  ratios, gains = [], []
  for seed in range(SEEDS):
    runs = {}
    for name, steps, backup in (("bsp", time // 5, 0), ("backup", time, 1)):
      config = config_lib.load(spec + (":tiny" if tiny else ""), [
          "--config.ps.consistency=bsp", f"--config.ps.backup_workers={backup}",
          f"--config.train.steps={steps}", "--config.train.log_every=5",
          f"--config.train.eval_every={steps}", f"--config.train.seed={seed}",
          "--config.train.progress=False"])
      runs[name] = train.run(config, os.path.join(workdir, f"{name}_{seed}")).summary
    ratios.append((runs["backup"]["step"] / runs["backup"]["sim_time"])
                  / (runs["bsp"]["step"] / runs["bsp"]["sim_time"]))
    gains.append(runs["backup"]["eval_accuracy"] - runs["bsp"]["eval_accuracy"])
  return {"rounds_ratio": ratios, "accuracy_gain": gains}
