"""The seed's example against its closed form: loss_t = loss_0 * (1 - 2 lr / d) ** (2 t)."""

import numpy as np

from conftest import load_experiment
from pdist import metrics, train


def test_seed_quadratic_follows_closed_form(tmp_path):
  config = load_experiment("seed_quadratic", arg="")
  config.train.progress = False
  result = train.run(config, str(tmp_path))
  rows = metrics.read(str(tmp_path))
  lr, d = config.optim.learning_rate, config.data.dim
  assert [r["step"] for r in rows] == list(range(100, 1001, 100))

  theta0 = np.asarray(result.strategy.task.init(
      __import__("jax").random.PRNGKey(config.train.seed))["theta"], np.float64)
  loss0 = np.mean(theta0 ** 2)
  factor = (1 - 2 * lr / d) ** 2
  for row in rows:
    t = row["step"]
    # eval_loss: the loss at theta_t
    np.testing.assert_allclose(row["eval_loss"], loss0 * factor ** t, rtol=1e-5)
    # loss: the mean of the losses at theta_{t-100} .. theta_{t-1}, the updates of the interval
    interval = loss0 * factor ** np.arange(t - 100, t)
    np.testing.assert_allclose(row["loss"], interval.mean(), rtol=1e-5)
  # 1000 steps of lr 0.01 shrink the loss by (1 - 2e-5)^2000 = 0.96079
  np.testing.assert_allclose(rows[-1]["eval_loss"] / loss0, 0.960789, rtol=1e-5)


def test_seed_theta_is_standard_normal_from_seed():
  config = load_experiment("seed_quadratic", arg="")
  from pdist import data, tasks
  import jax
  task = tasks.build(config, data.load(config.data))
  a = np.asarray(task.init(jax.random.PRNGKey(0))["theta"])
  b = np.asarray(task.init(jax.random.PRNGKey(1))["theta"])
  assert a.shape == (1000,) and not np.array_equal(a, b)
  assert abs(a.mean()) < 0.15 and abs(a.std() - 1) < 0.1
