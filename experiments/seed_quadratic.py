"""The seed's example: gradient descent on loss(theta) = mean(theta^2), theta in R^1000.

theta_0 ~ N(0, I) from config.train.seed; plain gradient descent with learning rate 0.01 for 1000
steps, loss logged every 100. The gradient is 2 theta / 1000, so every step multiplies theta by
(1 - 2 lr / 1000) and the loss follows the closed form

    loss_t = loss_0 * (1 - 2 lr / 1000) ** (2 t)

which tests/test_seed.py checks at every logged step (eval_loss is loss_t; loss is the mean of the
interval's per-update losses, a geometric series of the same form).

  python -m pdist --config experiments/seed_quadratic.py --workdir runs/seed_quadratic
  expected: eval_loss from ~1.0 at t=0 to loss_0 * 0.96079 at t=1000, in about 2 s.
"""

from pdist.config import apply_presets, base_config


def _tiny(c):
  c.train.steps = 200
  c.train.log_every = 50
  c.train.eval_every = 50


PRESETS = {"tiny": _tiny}


def get_config(arg=None):
  c = base_config()
  c.data.name = "quadratic"
  c.data.dim = 1000
  c.data.batch_size = 1
  c.model.name = "none"
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.01
  c.train.steps = 1000
  c.train.log_every = 100
  c.train.eval_every = 100
  return apply_presets(c, arg, PRESETS, "seed_quadratic")
