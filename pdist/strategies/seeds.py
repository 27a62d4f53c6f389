"""Many seeds in one program: `config.train.seeds = N` trains N copies of a `single` run with
seeds seed, seed + 1, ..., seed + N - 1 as one vmapped compiled chunk (the way PureJaxRL trains
many agents at once), instead of N processes.

Copy i is exactly the run `--config.train.seed=seed+i` would be: its own initial parameters, its
own batches from the stateless sampler, its own rngs; vmap only batches the arithmetic (tested to
rounding). Rows carry each metric's mean over the seeds, its standard deviation (`<name>_std`)
and the per-seed values (`<name>_seeds`); plots draw the mean with a +/- one std band.

Supported: `single` without DP-SGD (whose Poisson batches are drawn per run on the host) and
without compression (which needs a communicating strategy). Other strategies keep one seed per
program: `sync` already spreads one run over the devices, and `ps` replays a host-side schedule
per run.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pdist.data import batch_indices
from pdist.strategies import base
from pdist.strategies.single import Single

# set-up longer than this prints a line on stderr every this many seconds (many seeds' initial
# states are built one after another, ~10 ms each here, before the first row)
PROGRESS_SECONDS = 10.0


def seed_batches(seeds, step: int, batch_size: int, num_train: int, num_steps: int) -> np.ndarray:
  """[seeds, num_steps, batch_size]: each seed's batches of updates [step, step + num_steps), as
  the run with that seed draws them."""
  return np.stack([batch_indices(s, step, batch_size, num_train, num_steps=num_steps)
                   for s in seeds])


class Seeds(base.Strategy):
  """N vmapped copies of `Single` (its state gains a leading seed axis)."""

  def __init__(self, config, task, pipeline=None):
    self.inner = Single(config, task, pipeline=pipeline)
    self.task = task
    self.count = int(config.train.seeds)
    self.first_seed = int(config.train.seed)
    self._chunk = jax.jit(jax.vmap(self.inner._run_chunk, in_axes=(0, None, 0, None)),
                          static_argnums=(3,), donate_argnums=(0,))

  def seeds(self) -> list[int]:
    return [self.first_seed + i for i in range(self.count)]

  def init(self, rng):
    """Each copy's state as the run with its seed builds it, written in place into one stacked
    state (so the seeds' states are never held twice, as a list and as its stack); a line on
    stderr every PROGRESS_SECONDS while it takes long."""
    del rng  # each copy starts from its own seed, as a separate run would
    seeds = self.seeds()
    first = self.inner.initial_state(jax.random.PRNGKey(seeds[0]))
    stacked = jax.tree.map(
        lambda x: jnp.zeros((self.count,) + x.shape, x.dtype, device=self.inner.device), first)
    put = jax.jit(lambda all_, one, i: jax.tree.map(lambda a, b: a.at[i].set(b), all_, one),
                  donate_argnums=(0,))
    began = last = time.perf_counter()
    for i, seed in enumerate(seeds):
      state = first if i == 0 else self.inner.initial_state(jax.random.PRNGKey(seed))
      stacked = put(stacked, jax.device_put(state, self.inner.device), i)
      now = time.perf_counter()
      if now - last >= PROGRESS_SECONDS and jax.process_index() == 0:
        jax.block_until_ready(stacked)
        print(f"pdist: initial states of {i + 1} of {self.count} seeds built "
              f"({now - began:.0f} s)", file=sys.stderr, flush=True)
        last = now
    return stacked

  def step(self, state) -> int:
    return int(state["step"][0])

  def params(self, state):
    return state["params"]

  def examples_per_update(self, config) -> int:
    return self.inner.examples_per_update(config)

  def run(self, state, num_updates: int):
    step = self.step(state)
    idx = None
    if self.inner.data is not None:
      idx = seed_batches(self.seeds(), step, self.inner.batch_size,
                         self.task.dataset.num_train, num_updates)
    state, metrics = self._chunk(state, self.inner.data, idx, num_updates)
    return state, summarise(jax.device_get(metrics))

  def evaluate(self, state) -> dict:
    per_seed = [self.task.evaluate(jax.tree.map(lambda x: x[i], state["params"]))
                for i in range(self.count)]
    return summarise({k: np.asarray([m[k] for m in per_seed]) for k in per_seed[0]})


def summarise(per_seed: dict) -> dict:
  """{name: [N values]} -> {name: mean, name_std: std, name_seeds: [values]}."""
  out = {}
  for key, values in per_seed.items():
    values = np.asarray(values, np.float64)
    out[key] = float(values.mean())
    out[f"{key}_std"] = float(values.std())
    out[f"{key}_seeds"] = [float(v) for v in values]
  return out
