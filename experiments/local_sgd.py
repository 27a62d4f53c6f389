"""MNIST-1D with local SGD: 8 replicas that average their parameters every H updates (Stich 2019).

  python -m pdist --local_devices 8 --config experiments/local_sgd.py --workdir runs/local_sgd
  python -m pdist --local_devices 8 --config experiments/local_sgd.py:sync --workdir runs/lsgd_sync
  python -m pdist.launch --processes 2 --devices-per-process 4 -- \
      --config experiments/local_sgd.py --workdir runs/local_sgd_2x4      # two processes

An MLP (128, 128) with SGD (lr 0.05, momentum 0.9, the inner
optimizer of each replica) on a global batch of 128 (16 per replica), 3000 updates. Each replica
keeps its own momentum; every H = 8 updates the replicas' parameters are averaged (outer SGD with
lr 1, no momentum): 8x fewer synchronisations than `sync`, which sees the same examples.
Presets: tiny; sync (the same run, synchronous: the reference); H=N (e.g. H=32: every N updates);
postlocal (the first 500 updates synchronous, Lin et al. 2020); diloco (inner AdamW lr 1e-3,
outer Nesterov lr 0.7 momentum 0.9, H = 50); streaming (diloco in 3 staggered fragments); slow (the 100 Mbit/s, 50 ms
network of the low-communication figure; sim_time in seconds); fast (1 Gbit/s, 1 ms).
"""

from pdist.config import apply_presets, base_config, switch_strategy, tiny
from pdist.network import GBIT
from pdist.strategies.local import diloco

STEP_SECONDS = 0.01   # one update's computation, the time unit of sim_time (seconds)


def _tiny(c):
  tiny(c, steps=24, log_every=8, eval_every=24)
  if c.local.sync_warmup:
    c.local.sync_warmup = 8


def _sync(c):
  switch_strategy(c, "sync")   # config.local back at its defaults: sync does not read it


def _postlocal(c):
  c.local.sync_warmup = 500


def _diloco(c):
  diloco(c, inner_steps=50)
  c.optim.learning_rate, c.optim.momentum = 1e-3, 0.0


def _streaming(c):
  _diloco(c)
  c.local.fragments = 3


def _slow(c):
  c.network.bandwidth, c.network.latency = 0.1 * GBIT, 0.05


def _fast(c):
  c.network.bandwidth, c.network.latency = GBIT, 0.001


PRESETS = {"tiny": _tiny, "sync": _sync, "postlocal": _postlocal, "diloco": _diloco,
           "streaming": _streaming, "slow": _slow, "fast": _fast}


def get_config(arg=None):
  c = base_config()
  c.strategy = "local"
  c.data.name = "mnist1d"
  c.data.batch_size = 128
  c.model.name = "mlp"
  c.model.hidden = (128, 128)
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.05
  c.optim.momentum = 0.9
  c.local.inner_steps = 8
  c.sync.compute_time = STEP_SECONDS
  c.train.steps = 3000
  c.train.log_every = 100
  c.train.eval_every = 500
  return apply_presets(c, _h(arg), PRESETS, "local_sgd")


def _h(arg):
  """'H=32' is config.local.inner_steps (a short name for the sweeps of the figure)."""
  return None if arg is None else arg.replace("H=", "local.inner_steps=")
