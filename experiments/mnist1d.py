"""MNIST-1D (Greydanus 2020) classification on one device, MLP or 1-D CNN.

  python -m pdist --config experiments/mnist1d.py:cnn --workdir runs/mnist1d_cnn   # make run
  python -m pdist --config experiments/mnist1d.py:mlp --workdir runs/mnist1d_mlp

Data: 4000 train / 1000 test signals of length 40, generated locally (seed 42).
Expected (this 2-core machine): cnn 0.90 test accuracy in ~25 s (3000 updates); mlp 0.64 in
~13 s (8000 updates). Both overfit the 4000 examples (train loss -> 0). Published baselines: MLP 0.65-0.68, CNN 0.92-0.94.
Presets: mlp, cnn (model), tiny (a few seconds, for tests).
"""

from pdist.config import apply_presets, base_config


def _mlp(c):
  c.model.name = "mlp"
  c.model.hidden = (256, 256)
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.0
  c.train.steps = 8000
  c.train.eval_every = 1000


def _cnn(c):
  c.model.name = "cnn1d"
  c.model.hidden = (32, 32, 32)
  c.model.kernel = 5
  c.optim.name = "adam"
  c.optim.learning_rate = 3e-3
  c.optim.schedule = "cosine"
  c.train.steps = 3000
  c.train.eval_every = 250
  c.train.save_params = True    # params.npz: the teacher of experiments/distill.py


def _tiny(c):
  c.train.steps = 60
  c.train.log_every = 20
  c.train.eval_every = 30
  c.data.num_train = 400
  c.data.num_test = 200


PRESETS = {"mlp": _mlp, "cnn": _cnn, "tiny": _tiny}


def get_config(arg=None):
  c = base_config()
  c.data.name = "mnist1d"
  c.data.batch_size = 100
  c.train.log_every = 200
  c.train.eval_every = 1000
  _mlp(c)
  return apply_presets(c, arg, PRESETS, "mnist1d")
