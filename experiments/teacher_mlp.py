"""The benchmark workload: MLP 784-512-512-10 on synthetic teacher data, SGD lr 0.05 momentum 0.9.

  python -m pdist --config experiments/teacher_mlp.py --workdir runs/teacher_mlp
  python -m pdist --config experiments/teacher_mlp.py:sync --workdir runs/teacher_mlp_sync
  python -m pdist.launch --processes 2 -- --config experiments/teacher_mlp.py:sync \
      --workdir runs/teacher_mlp_2p

Inputs N(0, 1) in R^784, labels the argmax of a fixed random linear teacher; 16384 train / 1024
test. benchmarks/ times this workload; expected test accuracy ~0.85 after 1000 updates.
Presets: tiny, sync (data-parallel over all devices).
"""

from pdist.config import apply_presets, base_config


def _tiny(c):
  c.data.num_train = 1024
  c.data.num_test = 256
  c.model.hidden = (64, 64)
  c.train.steps = 20
  c.train.log_every = 10
  c.train.eval_every = 20


def _sync(c):
  c.strategy = "sync"


PRESETS = {"tiny": _tiny, "sync": _sync}


def get_config(arg=None):
  c = base_config()
  c.data.name = "teacher"
  c.data.num_train = 16384
  c.data.num_test = 1024
  c.data.batch_size = 256
  c.model.name = "mlp"
  c.model.hidden = (512, 512)
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.05
  c.optim.momentum = 0.9
  c.train.steps = 1000
  c.train.log_every = 100
  c.train.eval_every = 0
  return apply_presets(c, arg, PRESETS, "teacher_mlp")
