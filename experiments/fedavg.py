"""Federated learning on sklearn digits: FedAvg against FedSGD, IID against label-skewed clients.

  python -m pdist --config experiments/fedavg.py --workdir runs/fedavg            # FedAvg, IID
  python -m pdist --config experiments/fedavg.py:fedsgd --workdir runs/fedsgd     # one full-batch step
  python -m pdist --config experiments/fedavg.py:label --workdir runs/fedavg_label
  python -m pdist --config experiments/fedavg.py:dirichlet,scaffold --workdir runs/scaffold
  python -m pdist.sweep --config experiments/fedavg.py --workdir runs/fedavg_sweep

The setting of McMahan et al. 2017 at the size of sklearn's digits: 1400 training images over 100
clients of 14 (IID shards; `label`: two label-sorted shards each, so most clients see two
digits), 10 clients a round, an MLP 64-32-10. FedAvg: each client runs 5 local epochs of batch 10
with SGD lr 0.05 (about 10 local steps) and the server averages the changes (server SGD lr 1).
FedSGD: one full-batch gradient step per client (local_epochs 1, a batch as large as a client).
The sweep runs both on both partitions and reports rounds to 90% test accuracy (README).
Presets: tiny; fedsgd; label; dirichlet (alpha 0.3); fedprox (mu 0.1); scaffold; fedavgm (server
momentum 0.9); fedadam (server Adam, lr 0.01); fedyogi (server Yogi, lr 0.01); dropouts (20% of
clients drop mid-round, a deadline cuts the slowest); secagg (secure aggregation); dp
(user-level DP-FedAvg).
"""

from pdist.config import apply_presets, base_config


def _tiny(c):
  c.data.num_train, c.data.num_test = 400, 100
  c.data.batch_size = min(c.data.batch_size, c.data.num_train)   # fedsgd's full batch, shrunk
  c.federated.clients, c.federated.clients_per_round = 20, 5
  c.train.steps, c.train.log_every, c.train.eval_every = 20, 10, 10


def _fedsgd(c):
  c.federated.local_epochs = 1
  c.data.batch_size = c.data.num_train   # as large as any client: one full-batch step each
  c.federated.client_lr = 0.5


def _label(c):
  c.data.partition = "label"


def _dirichlet(c):
  c.data.partition = "dirichlet"
  c.data.dirichlet_alpha = 0.3


def _fedprox(c):
  c.federated.algorithm = "fedprox"
  c.federated.prox_mu = 0.1


def _scaffold(c):
  c.federated.algorithm = "scaffold"


def _fedavgm(c):
  c.optim.momentum = 0.9


def _fedadam(c):
  c.optim.name = "adam"
  c.optim.learning_rate = 0.01


def _fedyogi(c):
  c.optim.name = "yogi"
  c.optim.learning_rate = 0.01


def _dropouts(c):
  c.federated.dropouts.rate = 0.2
  c.federated.compute_time.dist = "lognormal"
  c.federated.compute_time.spread = 0.5
  c.federated.stragglers.fraction = 0.1
  c.federated.stragglers.factor = 4.0
  c.federated.deadline = 20.0


def _secagg(c):
  c.federated.secure_aggregation = True


def _dp(c):
  c.privacy.mechanism = "dpfedavg"
  c.privacy.clip_norm = 0.5
  c.privacy.noise_multiplier = 1.0
  c.privacy.delta = 1e-3    # below 1 / clients


PRESETS = {"tiny": _tiny, "fedsgd": _fedsgd, "label": _label, "dirichlet": _dirichlet,
           "fedprox": _fedprox, "scaffold": _scaffold, "fedavgm": _fedavgm, "fedadam": _fedadam,
           "fedyogi": _fedyogi, "dropouts": _dropouts, "secagg": _secagg, "dp": _dp}


def get_config(arg=None):
  c = base_config()
  c.strategy = "federated"
  c.data.name = "digits"
  c.data.num_train, c.data.num_test = 1400, 300
  c.data.batch_size = 10                 # the clients' local batch
  c.data.partition = "iid"
  c.model.name = "mlp"
  c.model.hidden = (32,)
  c.optim.name = "sgd"                   # the server's optimizer: lr 1 = plain averaging
  c.optim.learning_rate = 1.0
  c.federated.clients = 100
  c.federated.clients_per_round = 10
  c.federated.local_epochs = 5
  c.federated.client_lr = 0.05
  c.train.steps = 300                    # rounds
  c.train.log_every = 10
  c.train.eval_every = 10
  return apply_presets(c, arg, PRESETS, "fedavg")


def get_hyper(arg=None):
  """FedAvg and FedSGD, on IID and on label-skewed clients."""
  del arg
  fedsgd = {"federated.local_epochs": 1, "data.batch_size": 1400, "federated.client_lr": 0.5}
  return [("fedavg_iid", {}), ("fedsgd_iid", fedsgd),
          ("fedavg_label", {"data.partition": "label"}),
          ("fedsgd_label", {**fedsgd, "data.partition": "label"})]
