"""The seed's distributed gradient descent, as a parameter server, on its quadratic.

theta in R^1000 (loss = mean(theta^2), lr 0.01), stored as 4 parts, one server shard per part.
The mapping, step by step:
  1. the parameters are split into parts: config.data.parts = 4 arrays of 250 numbers, and
     config.ps.shards = 4 puts each on its own server shard (each with its own version);
  2. each of the 4 workers pulls every part from its shard (simulated time: latency + bytes /
     bandwidth per message, config.network, the shards' links in parallel);
  3. it computes the gradient 2 theta / 1000 (compute time from config.ps.compute_time) and pushes
     each part's slice to that part's shard;
  4. the shards accumulate and send back:
     - bsp: each shard waits for all workers' slices of this version, averages them, applies
       theta <- theta - lr * mean(grad), and the new version is what everyone pulls next;
     - async: each shard applies every slice on arrival (theta <- theta - lr * grad, with a
       gradient possibly computed on an older version: its staleness), and the worker pulls the
       shard's current version right after its push;
     - ssp: as async, but no worker gets more than 2 iterations ahead of the slowest.
  5. chaos: stragglers (25% of workers 4x slower), network latency, and crashes with restarts.

  python -m pdist --config experiments/seed_ps.py:bsp --workdir runs/seed_ps_bsp
  python -m pdist --config experiments/seed_ps.py:async --workdir runs/seed_ps_async
  python -m pdist.plots runs/seed_ps_bsp runs/seed_ps_async --x sim_time
  expected: bsp matches the seed's closed form loss_t = loss_0 (1 - 2e-5)^(2t) exactly (all
  workers compute the same gradient); async with 4 workers uses gradients 3 versions stale and
  lands within 1e-4 relative of it after 1000 updates (staleness barely matters at this lr).
"""

from pdist.config import apply_presets, base_config


def _bsp(c):
  c.ps.consistency = "bsp"


def _ssp(c):
  c.ps.consistency = "ssp"
  c.ps.max_staleness = 2
  c.ps.compute_time.dist = "lognormal"
  c.ps.compute_time.spread = 0.5


def _async(c):
  c.ps.consistency = "async"


def _chaos(c):
  c.ps.consistency = "async"
  c.ps.compute_time.dist = "lognormal"
  c.ps.compute_time.spread = 0.5
  c.ps.stragglers.fraction = 0.25
  c.ps.stragglers.factor = 4.0
  c.network.latency = 0.05
  c.network.bandwidth = 1e5
  c.ps.failures.rate = 0.01
  c.ps.failures.restart_delay = 5.0


def _tiny(c):
  c.train.steps = 100
  c.train.log_every = 25
  c.train.eval_every = 25


PRESETS = {"bsp": _bsp, "ssp": _ssp, "async": _async, "chaos": _chaos, "tiny": _tiny}


def get_config(arg=None):
  c = base_config()
  c.strategy = "ps"
  c.data.name = "quadratic"
  c.data.dim = 1000
  c.data.parts = 4
  c.data.batch_size = 1
  c.model.name = "none"
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.01
  c.ps.workers = 4
  c.ps.shards = 4
  c.train.steps = 1000
  c.train.log_every = 100
  c.train.eval_every = 100
  return apply_presets(c, arg, PRESETS, "seed_ps")
