"""Differential privacy: DP-SGD on MNIST-1D (or sklearn digits) and its privacy-utility curve.

  python -m pdist --config experiments/dp.py --workdir runs/dp                  # sigma 1.0
  python -m pdist --config experiments/dp.py:digits --workdir runs/dp_digits
  python -m pdist --config experiments/dp.py --workdir runs/dp_eps2 --config.privacy.target_epsilon=2.0
  python -m pdist.sweep --config experiments/dp.py --workdir runs/dp_sweep
  # runs/dp_sweep/privacy_utility.png: test accuracy against epsilon, non-private as a line

An MLP (128, 128) trained with DP-SGD (Abadi et al. 2016): Poisson batches of expected size 256
out of 8000 MNIST-1D examples (q = 0.032), every example's gradient clipped to norm 1, Gaussian
noise sigma x 1 on the sum, SGD momentum 0.9 at lr 0.1, 1500 updates (48 epochs); epsilon at
delta = 1e-5 from dp-accounting's RDP accountant. The sweep runs the non-private reference and
noise multipliers 0.6, 0.8, 1.2, 2 and 4 (about 2 minutes on 2 CPU cores). Measured numbers are
in the README.
Presets: tiny; digits (sklearn digits, 1497 examples, batch 64, 600 updates); nonprivate;
pld (the tighter PLD accountant, ~2 s a row); classic (RDP with the classic conversion of Abadi
et al.'s moments accountant, to compare with published tables).
"""

from pdist.config import apply_presets, base_config, tiny

SIGMAS = (0.6, 0.8, 1.2, 2.0, 4.0)


def _digits(c):
  c.data.name = "digits"
  c.data.num_train, c.data.num_test = 1497, 300  # all of sklearn's digits
  c.data.batch_size = 64
  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 150


def _nonprivate(c):
  c.privacy.mechanism = "none"
  c.privacy.noise_multiplier = 1.0


def _pld(c):
  c.privacy.accountant = "pld"


def _classic(c):
  c.privacy.accountant = "rdp_classic"


def _tiny(c):
  tiny(c, steps=20, log_every=10, eval_every=10)
  c.data.batch_size = 32


PRESETS = {"tiny": _tiny, "digits": _digits, "nonprivate": _nonprivate, "pld": _pld,
           "classic": _classic}


def get_config(arg=None):
  c = base_config()
  c.data.name = "mnist1d"
  c.data.num_train = 8000
  c.data.num_test = 2000
  c.data.batch_size = 256
  c.model.name = "mlp"
  c.model.hidden = (128, 128)
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.learning_rate = 0.1
  c.privacy.mechanism = "dpsgd"
  c.privacy.clip_norm = 1.0
  c.privacy.noise_multiplier = 1.0
  c.privacy.delta = 1e-5
  c.train.steps = 1500
  c.train.log_every = 50
  c.train.eval_every = 250
  return apply_presets(c, arg, PRESETS, "dp")


def get_hyper(arg=None):
  """The non-private reference, then one run per noise multiplier."""
  del arg
  return ([("nonprivate", {"privacy.mechanism": "none"})]
          + [(f"sigma{s:g}", {"privacy.noise_multiplier": s}) for s in SIGMAS])
