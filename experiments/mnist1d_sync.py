"""MNIST-1D with synchronous data parallelism over every visible device.

  python -m pdist --config experiments/mnist1d_sync.py --workdir runs/mnist1d_sync
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pdist \
      --config experiments/mnist1d_sync.py --workdir runs/mnist1d_sync8     # 8 emulated devices
  python -m pdist.launch --processes 2 --devices-per-process 2 -- \
      --config experiments/mnist1d_sync.py --workdir runs/mnist1d_sync_2x2  # two processes

Global batch 128 split evenly over the devices; the CNN of experiments/mnist1d.py:cnn. The
parameters after each update are those of `single` on the same global batches (to float rounding),
so expect its numbers: test accuracy ~0.89 after 3000 updates.
Presets: tiny; pmap (the older backend); mlp.
"""

from pdist.config import apply_presets, base_config, tiny


def _tiny(c):
  tiny(c, steps=40, eval_every=20)


def _pmap(c):
  c.sync.backend = "pmap"


def _mlp(c):
  c.model.name = "mlp"
  c.model.hidden = (256, 256)
  c.optim.schedule = "constant"
  c.optim.learning_rate = 1e-3


PRESETS = {"tiny": _tiny, "pmap": _pmap, "mlp": _mlp}


def get_config(arg=None):
  c = base_config()
  c.strategy = "sync"
  c.data.name = "mnist1d"
  c.data.batch_size = 128
  c.model.name = "cnn1d"
  c.model.hidden = (32, 32, 32)
  c.optim.name = "adam"
  c.optim.learning_rate = 3e-3
  c.optim.schedule = "cosine"
  c.train.steps = 3000
  c.train.log_every = 100
  c.train.eval_every = 500
  return apply_presets(c, arg, PRESETS, "mnist1d_sync")
