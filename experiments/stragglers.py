"""Stragglers: bsp vs bsp with backup workers vs async, 10 workers of which 10% are 5x slower.

Loss against simulated wall-clock: bsp waits for the straggler every round (5 time units a
round), bsp with one backup worker applies the first 9 arrivals and drops the straggler's gradient
(1 unit a round, Chen et al. 2016), async applies every gradient on arrival (~9.2 updates a unit,
the straggler's ~4x staler than the others'). Every variant runs for 100 units of simulated time.

  python -m pdist.sweep --config experiments/stragglers.py --workdir runs/stragglers
  # runs/stragglers/curves_sim_time.png; ~20 s on 2 CPU cores

Measured (2-core CPU, 2026-11-26), test accuracy at t = 100: bsp 0.21 (20 updates),
bsp_backup1 0.29 (100 updates, 100 dropped gradients), async 0.38 (919 updates).
"""

from pdist.config import apply_presets, base_config, tiny

SIM_TIME = 100
WORKERS = 10


PRESETS = {"tiny": tiny, "short": lambda c: None}  # short: get_hyper runs 1/2 of the time


def get_config(arg=None):
  c = base_config()
  c.strategy = "ps"
  c.data.name = "mnist1d"
  c.data.batch_size = 32
  c.model.name = "mlp"
  c.model.hidden = (128, 128)
  c.optim.name = "sgd"
  c.optim.momentum = 0.0
  c.optim.learning_rate = 0.05
  c.ps.workers = WORKERS
  c.data.partition = "shared"
  c.ps.stragglers.fraction = 0.1
  c.ps.stragglers.factor = 5.0
  c.train.steps = SIM_TIME
  c.train.log_every = 5
  c.train.eval_every = 20
  return apply_presets(c, arg, PRESETS, "stragglers")


def get_hyper(arg=None):
  tiny = arg and "tiny" in arg
  t = 10 if tiny else (SIM_TIME // 2 if arg and "short" in arg else SIM_TIME)
  async_updates = int(t * (WORKERS - 1 + 1 / 5))  # 9 workers at rate 1, one at rate 1/5
  return [
      ("bsp", {"ps.consistency": "bsp", "train.steps": max(t // 5, 2), "train.log_every": 1,
               "train.eval_every": 4}),
      ("bsp_backup1", {"ps.consistency": "bsp", "ps.backup_workers": 1, "train.steps": t,
                       "train.log_every": 5, "train.eval_every": 20}),
      ("async", {"ps.consistency": "async", "data.partition": "iid", "train.steps": async_updates,
                 "train.log_every": 46, "train.eval_every": 184}),
  ]
