"""Least squares under asynchronous SGD: the staleness-aware learning rate (Zhang et al. 2016).

  python -m pdist --config experiments/least_squares.py --workdir runs/lsq
  python -m pdist.sweep --config experiments/least_squares.py --workdir runs/lsq_sweep
  # runs/lsq_sweep/curves.png: excess loss over the exact optimum, per variant; ~1 minute

Data: y = <w, x> + 0.1 noise, x ~ N(0, I) in R^100, 4000 training examples (the `regression`
dataset); a linear model, so the optimum of the training loss is known exactly (least squares,
in float64) and `excess_loss` = training loss - optimum is reported at every evaluation.
SGD lr 0.05, batch 16 per worker, 2000 updates: a single worker, then async with 16 workers
(gradients ~15 versions stale) at the same lr, and with lr / staleness.
Presets: tiny; async (16 workers); inverse (16 workers, lr / staleness).
"""

from pdist.config import apply_presets, base_config, tiny

WORKERS = 16


def _async(c):
  c.strategy = "ps"
  c.ps.workers = WORKERS
  c.ps.consistency = "async"


def _inverse(c):
  _async(c)
  c.ps.staleness_lr = "inverse"


PRESETS = {"tiny": lambda c: tiny(c, steps=40, log_every=10, eval_every=20), "async": _async,
           "inverse": _inverse}


def get_config(arg=None):
  c = base_config()
  c.strategy = "ps"
  c.ps.workers = 1
  c.data.name = "regression"
  c.data.dim = 100
  c.data.batch_size = 16
  c.model.name = "linear"
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.05
  c.train.steps = 2000
  c.train.log_every = 50
  c.train.eval_every = 100
  return apply_presets(c, arg, PRESETS, "least_squares")


def get_hyper(arg=None):
  del arg
  return [("one_worker", {"ps.workers": 1}),
          (f"async{WORKERS}", {"ps.workers": WORKERS}),
          (f"async{WORKERS}_inverse", {"ps.workers": WORKERS, "ps.staleness_lr": "inverse"})]
