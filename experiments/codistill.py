"""Online codistillation (Anil et al. 2018) on MNIST-1D against data-parallel training.

  python -m pdist --config experiments/codistill.py --workdir runs/codistill
  python -m pdist.sweep --config experiments/codistill.py --workdir runs/codistill_sweep

Two replicas of experiments/mnist1d.py's MLP (256, 256; Adam 1e-3; batch 100 each, 4000 updates)
train on their own batch streams and exchange parameters every 100 updates; each learns from the
other's stale predictions (weight 0.5, T 1). Their exchange totals 2 x model bytes every 100
updates; data-parallel training over the same 2 groups (one model, batch 200) would send 2 x model
bytes every update (`bytes_exchanged_data_parallel`). The sweep compares codistillation at
exchange intervals 25, 100, 400, two independent replicas (weight 0), and data-parallel training
(`sync_like`: one model on batch 200, which sync over 2 devices equals).
With the `ps` preset each replica is trained by its own emulated async parameter server of 4
workers (`codistill.group=ps`), and the sweep's `ps_*` variants compare codistillation between
two such servers with two independent ones.
Presets: tiny; independent (weight 0); ps.
"""

from pdist.config import apply_presets, base_config


def _tiny(c):
  c.data.num_train, c.data.num_test = 400, 200
  c.train.steps, c.train.log_every, c.train.eval_every = 20, 10, 20
  c.codistill.exchange_every = 5


def _independent(c):
  c.codistill.weight = 0.0


def _ps(c):
  """Each replica trained by an async parameter server of 4 workers (the groups of workers of
  Anil et al.), simulated time from config.ps: lognormal compute times; config.network: 0.01
  latency, unlimited bandwidth."""
  c.codistill.group = "ps"
  c.network.bandwidth = 0.0
  c.ps.workers = 4
  c.ps.compute_time.dist, c.ps.compute_time.spread = "lognormal", 0.5
  c.network.latency = 0.01


PRESETS = {"tiny": _tiny, "independent": _independent, "ps": _ps}


def get_config(arg=None):
  c = base_config()
  c.strategy = "codistill"
  c.data.name = "mnist1d"
  c.data.batch_size = 100
  c.model.name = "mlp"
  c.model.hidden = (256, 256)
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.codistill.replicas = 2
  c.codistill.exchange_every = 100
  c.codistill.weight = 0.5
  c.codistill.temperature = 1.0
  c.network.latency = 0.01          # simulated time: 1 unit of compute a update; messages of
  c.network.bandwidth = 5e7          # latency 0.01 and 5e7 bytes a unit (the MLP's 1.3 MB: 0.025)
  c.train.steps = 4000
  c.train.log_every = 100
  c.train.eval_every = 500
  return apply_presets(c, arg, PRESETS, "codistill")


PS_GROUPS = {"codistill.group": "ps", "network.bandwidth": 0.0,
             "ps.workers": 4, "ps.compute_time.dist": "lognormal",
             "ps.compute_time.spread": 0.5, "network.latency": 0.01}   # = the ps preset


def get_hyper(arg=None):
  del arg
  return ([(f"every{e}", {"codistill.exchange_every": e}) for e in (25, 100, 400)]
          + [("independent", {"codistill.weight": 0.0}),
             ("sync_like", {"strategy": "single", "data.batch_size": 200}),
             ("ps_every100", PS_GROUPS),
             ("ps_independent", {**PS_GROUPS, "codistill.weight": 0.0})])
