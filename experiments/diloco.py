"""DiLoCo (Douillard et al. 2023) on the byte-level language model of experiments/charlm.py:
8 replicas, each taking H = 100 AdamW steps on its own batches between synchronisations, then an
outer Nesterov step (lr 0.7, momentum 0.9) on the replicas' mean parameter change.

  python -m pdist --local_devices 8 --config experiments/diloco.py --workdir runs/diloco
  python -m pdist --local_devices 8 --config experiments/diloco.py:sync --workdir runs/diloco_sync
  python -m pdist --local_devices 8 --config experiments/diloco.py:streaming --workdir runs/sdiloco

charlm's Transformer (2 blocks, width 128, 4 heads, context 128 bytes) on a global batch of 64
windows (8 per replica), AdamW (lr 3e-3, weight decay 0.1, 100 warmup updates, cosine decay over
the run) as the inner optimizer, 2000 updates: 20 synchronisations against `sync`'s 2000 at the
same tokens (the paper: H = 500 over 88,000 steps, 8 replicas, a 150M-parameter model on C4).
Presets: tiny; sync (the reference: every update all-reduced, same tokens and optimizer);
H=N (inner steps); streaming (4 fragments synchronised at staggered steps, Douillard et al.
2025; add --config.compression.name=... to compress the outer gradients); slow, fast (the
networks of experiments/local_sgd.py).
"""

from pdist.config import apply_presets, base_config, switch_strategy
from pdist.network import GBIT
from pdist.strategies.local import diloco


def _tiny(c):
  c.data.seq_len = 32
  c.data.batch_size = 16
  c.model.width, c.model.layers, c.model.heads = 32, 1, 2
  c.optim.warmup_steps = 5
  if c.strategy == "local":   # sync does not read config.local
    c.local.inner_steps = 4
  c.train.steps, c.train.log_every, c.train.eval_every = 8, 4, 8


def _sync(c):
  switch_strategy(c, "sync")   # config.local back at its defaults: sync does not read it


def _streaming(c):
  c.local.fragments = 4


def _network(name):
  def preset(c):
    c.network.bandwidth, c.network.latency = {"slow": (0.1 * GBIT, 0.05),
                                              "fast": (GBIT, 0.001)}[name]
  return preset


PRESETS = {"tiny": _tiny, "sync": _sync, "streaming": _streaming,
           "slow": _network("slow"), "fast": _network("fast")}


def get_config(arg=None):
  c = base_config()
  diloco(c, inner_steps=100)
  c.data.name = "numpy_docs"
  c.data.seq_len = 128
  c.data.batch_size = 64
  c.model.name = "transformer"
  c.model.width, c.model.layers, c.model.heads = 128, 2, 4
  c.optim.learning_rate = 3e-3
  c.optim.weight_decay = 0.1
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_steps = 100
  c.sync.compute_time = 0.1   # seconds per update: sim_time in seconds
  c.train.steps = 2000
  c.train.log_every = 50
  c.train.eval_every = 500
  arg = None if arg is None else arg.replace("H=", "local.inner_steps=")
  return apply_presets(c, arg, PRESETS, "diloco")
