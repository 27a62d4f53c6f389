"""The linear-scaling rule for large batches (Goyal et al. 2017), on MNIST-1D with an MLP.

Three runs of the same number of epochs with SGD (momentum 0.9), over synchronous data parallelism:
  small:        batch 32,  lr x
  large_scaled: batch 256, lr 8x (linear scaling: base_batch_size 32) with a linear warmup
  large:        batch 256, lr x (8x fewer updates at the small-batch rate)

  python -m pdist.sweep --config experiments/large_batch.py --workdir runs/large_batch
  # curves per epoch in runs/large_batch/curves_epoch.png; ~1 minute on 2 CPU cores

Expected: large_scaled tracks small per epoch (test accuracy within a few points), while large at
lr x lags well behind after the same epochs.
"""

from pdist.config import apply_presets, base_config, tiny

EPOCHS = 30
NUM_TRAIN = 4000
LR = 0.01


PRESETS = {"tiny": tiny}


def get_config(arg=None):
  c = base_config()
  c.strategy = "sync"
  c.data.name = "mnist1d"
  c.data.num_train = NUM_TRAIN
  c.data.batch_size = 32
  c.model.name = "mlp"
  c.model.hidden = (256, 256)
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.learning_rate = LR
  c.optim.base_batch_size = 32
  c.train.steps = EPOCHS * NUM_TRAIN // 32
  c.train.log_every = 25
  c.train.eval_every = 125
  return apply_presets(c, arg, PRESETS, "large_batch")


def get_hyper(arg=None):
  """(name, overrides) per variant; steps keep the number of epochs equal."""
  tiny = arg and "tiny" in arg
  epochs_steps = (lambda b: 20) if tiny else (lambda b: EPOCHS * NUM_TRAIN // b)
  large_log, large_eval = 5, (10 if tiny else 16)  # the same epochs between rows as `small`
  return [
      ("small", {"data.batch_size": 32, "optim.base_batch_size": 32,
                 "train.steps": epochs_steps(32)}),
      ("large_scaled", {"data.batch_size": 256, "optim.base_batch_size": 32,
                        "optim.schedule": "warmup", "optim.warmup_steps": 5 if tiny else 78,
                        "train.steps": epochs_steps(256), "train.log_every": large_log,
                        "train.eval_every": large_eval}),
      ("large", {"data.batch_size": 256, "optim.base_batch_size": 0,
                 "train.steps": epochs_steps(256), "train.log_every": large_log,
                 "train.eval_every": large_eval}),
  ]
