"""Staleness and the learning rate (Zhang et al. 2016): async SGD with many workers on MNIST-1D.

An MLP trained by K asynchronous workers (equal speed, so every gradient is about K - 1 versions
stale) at one fixed learning rate, with and without the staleness-aware rule lr / staleness;
bsp with 8 workers of the same per-worker batch is the synchronous reference.

  python -m pdist.sweep --config experiments/staleness.py --workdir runs/staleness
  # runs/staleness/curves.png (per update), curves_sim_time.png (simulated wall-clock); ~1 min

Every variant runs for the same 150 units of simulated time (gradient compute time 1): bsp K makes
one update of K*32 examples per unit, async K makes K updates of 32 examples, each ~K-1 stale.
Measured (2-core CPU, 2026-11-26), test accuracy at t = 150:
  bsp8 0.41, async8 0.60, async8_inverse 0.44; bsp32 0.43, async32 0.11 (chance: fixed-lr async
  with 32 workers fails), async32_inverse 0.42 (lr / staleness restores sync's curve).
"""

from pdist.config import apply_presets, base_config, tiny


PRESETS = {"tiny": tiny, "short": lambda c: None}  # short: get_hyper runs 1/3 of the time


def get_config(arg=None):
  c = base_config()
  c.strategy = "ps"
  c.data.name = "mnist1d"
  c.data.batch_size = 32
  c.model.name = "mlp"
  c.model.hidden = (128, 128)
  c.optim.name = "sgd"
  c.optim.momentum = 0.0
  c.optim.learning_rate = 0.2
  c.optim.grad_clip = 0.0
  c.ps.workers = 8
  c.ps.consistency = "async"
  c.train.steps = 1200
  c.train.log_every = 40
  c.train.eval_every = 0
  return apply_presets(c, arg, PRESETS, "staleness")


SIM_TIME = 150  # every variant runs for the same simulated time (compute time 1 per gradient)


def get_hyper(arg=None):
  """bsp K (one update per time unit) vs async K (K updates per time unit), with/without lr/tau."""
  tiny = arg and "tiny" in arg
  sim_time = SIM_TIME // 3 if arg and "short" in arg else SIM_TIME
  variants = []
  for k in (8, 32):
    bsp_steps, async_steps = (10, 20) if tiny else (sim_time, sim_time * k)
    common = {"ps.workers": k}
    variants.append((f"bsp{k}", {**common, "ps.consistency": "bsp", "data.partition": "shared",
                                 "train.steps": bsp_steps, "train.log_every": 5,
                                 "train.eval_every": 10 if tiny else 25}))
    for rule in ("none", "inverse"):
      variants.append((f"async{k}" + ("_inverse" if rule == "inverse" else ""),
                       {**common, "ps.staleness_lr": rule, "train.steps": async_steps,
                        "train.log_every": 10 if tiny else 5 * k,
                        "train.eval_every": 10 if tiny else 25 * k}))
  return variants
