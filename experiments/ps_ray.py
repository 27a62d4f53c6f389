"""The parameter server for real: K Ray worker processes on this machine, checked against the emulator.

MNIST-1D, MLP 128-128, batch 32 per worker, SGD lr 0.05, 1000 updates, config.ps.backend='ray'
(any `ps` experiment runs for real with --config.ps.backend=ray). Each run writes its trace;
`python -m pdist.replay WORKDIR` recomputes the run from it bit for bit, fits the emulator's
timing model to the compute times and latencies the run measured, and compares the staleness
the emulator predicts with the real one (total variation distance and a figure).

  python -m pdist --config experiments/ps_ray.py --workdir runs/ray_k4
  python -m pdist.replay runs/ray_k4        # bit for bit; staleness_real_vs_emulator.png
  python -m pdist.sweep --config experiments/ps_ray.py --workdir runs/ps_ray   # k4, k16 x async, ssp
  python -m pdist --config experiments/ps_ray.py:kill --workdir runs/ray_kill  # worker 1 killed at 0.5 s
  python -m pdist --config experiments/ps_ray.py:tls --workdir runs/ray_tls    # Ray's gRPC over mutual TLS

Measured (2-core CPU, 2026-11-27; ~0.5 to 2 minutes a run, most of it Ray's and the workers'
start-up), real vs emulated staleness: see the README's "Parameter server on Ray" table. On
more workers than cores the workers time-share the CPU, which the emulator's independent
per-worker compute times do not model; docs/ARCHITECTURE.md says where that shows.
Presets: tiny, k16 (16 workers), ssp (bound 2), bsp (one backup worker), kill, tls (config.ps.ray_tls=
'auto': a CA and certificate of the run's own for 127.0.0.1, every Ray connection mutual TLS).
"""

from pdist.config import apply_presets, base_config, tiny


def _tiny(c):
  tiny(c, steps=20, log_every=10, eval_every=20)
  c.model.hidden = (32, 32)
  c.ps.workers = 2


def _k16(c):
  c.ps.workers = 16


def _ssp(c):
  c.ps.consistency = "ssp"
  c.ps.max_staleness = 2


def _bsp(c):
  c.ps.consistency = "bsp"
  c.ps.backup_workers = 1
  c.data.partition = "shared"


def _kill(c):
  c.ps.failures.at = ((0.5, 1),)  # seconds after training started, worker 1
  c.train.steps = 5000            # ~8 s: long enough for its new process to start and rejoin


def _tls(c):
  c.ps.ray_tls = "auto"


PRESETS = {"tiny": _tiny, "k16": _k16, "ssp": _ssp, "bsp": _bsp, "kill": _kill, "tls": _tls}


def get_config(arg=None):
  c = base_config()
  c.strategy = "ps"
  c.ps.backend = "ray"
  c.ps.workers = 4
  c.data.name = "mnist1d"
  c.data.batch_size = 32
  c.model.name = "mlp"
  c.model.hidden = (128, 128)
  c.optim.name = "sgd"
  c.optim.momentum = 0.0
  c.optim.learning_rate = 0.05
  c.train.steps = 1000
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.save_params = True   # what pdist.replay compares with
  return apply_presets(c, arg, PRESETS, "ps_ray")


def get_hyper(arg=None):
  del arg
  return [("k4_async", {"ps.workers": 4}), ("k16_async", {"ps.workers": 16}),
          ("k4_ssp", {"ps.workers": 4, "ps.consistency": "ssp", "ps.max_staleness": 2}),
          ("k16_ssp", {"ps.workers": 16, "ps.consistency": "ssp", "ps.max_staleness": 2})]
