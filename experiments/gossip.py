"""MNIST-1D with decentralized SGD (D-PSGD, Lian et al. 2017): 8 replicas, no server, each
averaging with its neighbours on a graph after every update.

  python -m pdist --local_devices 8 --config experiments/gossip.py --workdir runs/gossip_ring
  python -m pdist --local_devices 8 --config experiments/gossip.py:exponential --workdir runs/gossip_exp

The MLP and SGD of experiments/local_sgd.py (128, 128; lr 0.05, momentum 0.9; global batch 128,
16 per replica; 3000 updates). Each replica sends its parameters to its neighbours every update:
2 on a ring, 3 on the exponential graph of 8 (Ying et al. 2021), 3 on the 2 x 4 torus; `complete`
is one all-reduce, i.e. `sync`. Rows carry `consensus`, the replicas' mean distance from their
average. Presets: tiny; ring, torus, exponential, complete; sync (the reference); slow, fast (the
networks of experiments/local_sgd.py).
"""

from pdist.config import apply_presets, base_config, switch_strategy, tiny
from pdist.network import GBIT


def _topology(name):
  def preset(c):
    c.gossip.topology = name
  return preset


def _sync(c):
  switch_strategy(c, "sync")   # config.gossip back at its defaults: sync does not read it


def _tiny(c):
  tiny(c, steps=24, log_every=8, eval_every=24)


def _network(name):
  def preset(c):
    c.network.bandwidth, c.network.latency = {"slow": (0.1 * GBIT, 0.05),
                                              "fast": (GBIT, 0.001)}[name]
  return preset


PRESETS = {"tiny": _tiny, "sync": _sync, "slow": _network("slow"), "fast": _network("fast"),
           **{t: _topology(t) for t in ("ring", "torus", "exponential", "complete")}}


def get_config(arg=None):
  c = base_config()
  c.strategy = "gossip"
  c.gossip.topology = "ring"
  c.data.name = "mnist1d"
  c.data.batch_size = 128
  c.model.name = "mlp"
  c.model.hidden = (128, 128)
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.05
  c.optim.momentum = 0.9
  c.sync.compute_time = 0.01   # seconds per update: sim_time in seconds
  c.train.steps = 3000
  c.train.log_every = 100
  c.train.eval_every = 500
  return apply_presets(c, arg, PRESETS, "gossip")
