"""`local`: local SGD, DiLoCo and streaming DiLoCo on the data-parallel mesh.

Each device of the `data` axis holds one replica: its own parameters and its own inner-optimizer
state (config.optim: the run's optimizer is the inner one). Every update, each replica takes one
step on its 1/N slice of the global batch (the slice `sync` would give that device), without
communicating. Every H = config.local.inner_steps updates the replicas synchronise:

    outer gradient   Delta = mean_i (theta - theta_i)        theta: the parameters at the round's start
    outer step       theta <- outer_optimizer(theta, Delta)   (config.local.outer_*)
    every replica    theta_i <- theta                         (its inner state is kept)

Plain periodic averaging (local SGD, Stich 2019) is the outer SGD with lr 1 and no momentum: then
theta <- mean_i theta_i. DiLoCo (Douillard et al. 2023) is inner AdamW and outer Nesterov SGD with
lr 0.7 and momentum 0.9. With H = 1, plain averaging and plain-SGD inner steps the run is `sync`'s
(theta - mean_i (theta - (theta - lr g_i)) = theta - lr mean_i g_i, up to float rounding).

- sync_warmup = W: the first W updates are synchronous (the gradients are all-reduced dense,
  `sync`'s uncompressed update on every replica: config.compression applies to outer gradients
  only), then local steps start: post-local SGD (Lin et al. 2020).
- fragments = P (streaming DiLoCo, Douillard et al. 2025): the parameters' leaves are cut into P
  contiguous fragments of about equal element counts; fragment p synchronises at the local steps
  k with k = floor(p*H/P) (mod H), each with its own outer-optimizer state, so only 1/P of the
  model is sent at once. The exchange does not overlap the next inner steps (the paper's tau = 0)
  and fragments are contiguous leaves, not strided layers. Outer gradients go through config.compression (per replica, error feedback where the
  compressor keeps it) before they are averaged; each fragment has its own compressor state.

The parameters a run evaluates and saves are the outer ones (theta: what every replica starts the
next round from), which a real deployment has without further communication; during the warmup,
the (identical) replicas'. Rows carry `syncs` (model-sized all-reduces so far: a fragment's counts
its share), `bytes_sent` (what one replica sends over its link), `sim_time` (config.sync.compute_time
per update plus each collective priced by pdist/network.py; communication does not overlap
compute), and `consensus` (mean over replicas of ||theta_i - mean theta||, at the row's end).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pdist import optim
from pdist import pipeline as pipeline_lib
from pdist.parallel.mesh import AXIS
from pdist.registry import STRATEGIES, ConfigError, check_choice, check_positive
from pdist.strategies import replicas as replicas_lib

OUTER_OPTIMIZERS = ("sgd", "adam")


def local_config() -> ml_collections.ConfigDict:
  """config.local: the rounds of local steps and the outer step (defaults: plain averaging)."""
  c = ml_collections.ConfigDict()
  c.inner_steps = 8             # H: local steps between synchronisations
  c.outer_optimizer = "sgd"     # sgd / adam, applied to the mean parameter change
  c.outer_learning_rate = 1.0   # 1 with sgd and no momentum: plain averaging
  c.outer_momentum = 0.0        # DiLoCo: 0.9
  c.outer_nesterov = False      # DiLoCo: True (lr 0.7)
  c.sync_warmup = 0             # synchronous updates before local steps start (post-local SGD)
  c.fragments = 1               # streaming: fragments synchronised at staggered steps
  return c


def validate_local(config) -> None:
  c = config.local
  replicas_lib.validate_mesh(config, "local")
  check_choice(config, "local.outer_optimizer", OUTER_OPTIMIZERS)
  check_positive(config, "local.inner_steps", "local.fragments", "local.outer_learning_rate")
  check_positive(config, "local.outer_momentum", "local.sync_warmup", allow_zero=True)
  if c.outer_momentum >= 1:
    raise ConfigError(f"config.local.outer_momentum must be below 1, got {c.outer_momentum}")
  if c.outer_optimizer != "sgd" and (c.outer_momentum or c.outer_nesterov):
    raise ConfigError(f"config.local.outer_momentum and outer_nesterov apply to the outer 'sgd' "
                      f"only, not '{c.outer_optimizer}'")
  if c.outer_optimizer == "adam" and c.outer_learning_rate >= 1:
    raise ConfigError(f"config.local.outer_learning_rate={c.outer_learning_rate} with the outer "
                      "'adam' moves every coordinate by about that much a round; set a small one "
                      "(e.g. 1e-3; the default 1.0 is plain averaging's, with 'sgd')")
  if c.outer_nesterov and not c.outer_momentum:
    raise ConfigError("config.local.outer_nesterov=True needs config.local.outer_momentum > 0")
  if c.fragments > c.inner_steps:
    raise ConfigError(f"config.local.fragments={c.fragments} is more than "
                      f"config.local.inner_steps={c.inner_steps}: each fragment synchronises at "
                      "its own step of a round, so at most H fragments")


def outer_optimizer(c) -> optax.GradientTransformation:
  if c.outer_optimizer == "adam":
    return optax.adam(c.outer_learning_rate)
  return optax.sgd(c.outer_learning_rate, momentum=c.outer_momentum or None,
                   nesterov=c.outer_nesterov)


def split_fragments(shapes: list[tuple[int, ...]], fragments: int) -> list[list[int]]:
  """Leaf indices of each of `fragments` contiguous groups of leaves of about equal size (a leaf
  goes to the group its midpoint falls in); ConfigError if there are fewer leaves than groups."""
  if fragments > len(shapes):
    raise ConfigError(f"config.local.fragments={fragments} but the model has {len(shapes)} "
                      "parameter arrays; a fragment is a group of whole arrays")
  sizes = np.array([int(np.prod(s)) for s in shapes], dtype=np.float64)
  mid = np.cumsum(sizes) - sizes / 2
  group = np.minimum((mid * fragments / sizes.sum()).astype(int), fragments - 1)
  groups = [[int(i) for i in np.flatnonzero(group == p)] for p in range(fragments)]
  if any(not g for g in groups):   # one leaf dominates: equal numbers of leaves instead
    groups = [[int(i) for i in g] for g in np.array_split(np.arange(len(shapes)), fragments)]
  return groups


def syncs_done(local_steps: int, offset: int, every: int) -> int:
  """How many of the local steps 1..local_steps are k = offset (mod every), offset in [0, every)."""
  first = offset if offset > 0 else every
  return 0 if local_steps < first else (local_steps - first) // every + 1


@STRATEGIES.register("local", config=local_config, validate=validate_local,
                     reads=replicas_lib.READS, uses=lambda c: ("sync",))
class Local(replicas_lib.Replicas):

  def __init__(self, config, task, pipeline=None):
    super().__init__(config, task, pipeline)
    c = config.local
    self.H, self.W = int(c.inner_steps), int(c.sync_warmup)
    self.outer_tx = outer_optimizer(c)
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    leaves = jax.tree.leaves(shapes)
    self.groups = split_fragments([x.shape for x in leaves], int(c.fragments))
    self.offsets = [p * self.H // len(self.groups) for p in range(len(self.groups))]
    self.pipes = [pipeline_lib.build(config, [leaves[i] for i in g]) for g in self.groups]
    dense = [int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves]
    self.fragment_bytes = []   # one replica's payload when fragment p synchronises
    for g, pipe in zip(self.groups, self.pipes):
      wire = pipe.wire_bytes([leaves[i] for i in g]) if pipe.wire_bytes else None
      self.fragment_bytes.append(sum(wire) if wire is not None else sum(dense[i] for i in g))
    self.model_bytes = sum(dense)
    self.compressed = any(p.wire_bytes is not None for p in self.pipes)

  # -- state -----------------------------------------------------------------------------------
  def extra_state(self, params):
    frags = []
    for g, pipe in zip(self.groups, self.pipes):
      sub = _take(params, g)
      frags.append({"outer": self.outer_tx.init(sub),
                    "pipeline": pipeline_lib.init_state(pipe, sub, self.num_devices)})
    return {"params": params, "fragments": tuple(frags)}

  def extra_specs(self):
    frag = {"outer": replicas_lib.P(), "pipeline": {"local": replicas_lib.P(AXIS),
                                                    "central": replicas_lib.P()}}
    return {"params": replicas_lib.P(), "fragments": tuple(frag for _ in self.groups)}

  def params(self, state):
    if self.step(state) < self.W:   # the replicas are identical during the warmup
      return self.replica_params(state, 0)
    return super().params(state)

  # -- one update --------------------------------------------------------------------------------
  def update(self, state, batch):
    s = state["step"]
    rng = jax.random.fold_in(state["step_key"], s)
    mine, opt = self.my_replica(state)
    grads, (loss, aux) = self._grad(mine, batch, rng)
    if self.W:   # post-local SGD: synchronous updates first
      grads = jax.lax.cond(s < self.W, lambda g: replicas_lib.varying(
          jax.lax.pmean(g, AXIS)), lambda g: g, grads)
    mine, opt = optim.apply_gradient(self.tx, mine, opt, grads)
    theta = state["params"]
    if self.W:   # the warmup's last update: the outer parameters become the (equal) replicas'
      theta = jax.lax.cond(s + 1 == self.W, lambda t: jax.lax.pmax(mine, AXIS), lambda t: t,
                           theta)
    k = s + 1 - self.W   # local steps done after this update
    key = jax.random.fold_in(rng, replicas_lib.PIPELINE_SALT)
    frags = list(state["fragments"])
    for p, (g, off) in enumerate(zip(self.groups, self.offsets)):
      due = (k > 0) & (k % self.H == off)
      theta, mine, frags[p] = jax.lax.cond(
          due, lambda a, p=p, g=g: self._synchronise(p, g, *a, key),
          lambda a: a, (theta, mine, frags[p]))
    new = dict(state, step=s + 1, params=theta, fragments=tuple(frags))
    return self.store_replica(new, mine, opt), {"loss": loss, **aux}

  def _synchronise(self, p, leaves, theta, mine, frag, key):
    """Fragment p's outer step: the replicas' mean change (through the compressor) -> theta."""
    t_all, m_all = jax.tree.leaves(theta), jax.tree.leaves(mine)
    t, m = [t_all[i] for i in leaves], [m_all[i] for i in leaves]
    delta = [replicas_lib.varying(a) - b for a, b in zip(t, m)]
    pipe = self.pipes[p]
    local = jax.tree.map(lambda x: x[0], frag["pipeline"]["local"])
    key = jax.random.fold_in(key, p)
    delta, new_local, _ = pipe.local.update(delta, local, None,
                                            jax.random.fold_in(key, jax.lax.axis_index(AXIS)))
    mean = jax.lax.pmean(delta, AXIS)
    mean, central, _ = pipe.central.update(mean, frag["pipeline"]["central"], t, key)
    t, outer = optim.apply_gradient(self.outer_tx, t, frag["outer"], mean)
    for j, i in enumerate(leaves):
      t_all[i], m_all[i] = t[j], replicas_lib.varying(t[j])
    frag = {"outer": outer, "pipeline": {
        "local": replicas_lib.like(jax.tree.map(lambda x: x[None], new_local),
                                   frag["pipeline"]["local"]),
        "central": central}}
    tree = jax.tree.structure(theta)
    return (jax.tree.unflatten(tree, t_all), jax.tree.unflatten(tree, m_all), frag)

  # -- communication (host side, from the step alone) ------------------------------------------
  def communication(self, step: int, network=None) -> dict[str, float]:
    n, net = self.num_devices, network or self.network
    warm = min(step, self.W)
    local_steps = max(step - self.W, 0)
    syncs = float(warm)
    sent = warm * net.all_reduce_sent(self.model_bytes, n)
    time = step * self.compute_time + warm * net.all_reduce(self.model_bytes, n)
    for off, nbytes in zip(self.offsets, self.fragment_bytes):
      done = syncs_done(local_steps, off, self.H)
      syncs += done / len(self.groups)
      if self.compressed:   # each replica's compressed outer gradient, all-gathered
        sent += done * net.all_gather_sent(n * nbytes, n)
        time += done * net.all_gather(n * nbytes, n)
      else:
        sent += done * net.all_reduce_sent(nbytes, n)
        time += done * net.all_reduce(nbytes, n)
    return {"syncs": syncs, "bytes_sent": float(sent), "sim_time": time}


def _take(tree, indices):
  leaves = jax.tree.leaves(tree)
  return [leaves[i] for i in indices]


def diloco(c: ml_collections.ConfigDict, inner_steps: int = 500) -> None:
  """DiLoCo's recipe (Douillard et al. 2023): inner AdamW, outer Nesterov SGD lr 0.7, momentum 0.9."""
  c.strategy = "local"
  c.optim.name, c.optim.momentum, c.optim.nesterov = "adamw", 0.0, False
  c.local.inner_steps = inner_steps
  c.local.outer_learning_rate = 0.7
  c.local.outer_momentum = 0.9
  c.local.outer_nesterov = True


__all__ = ["Local", "diloco", "local_config", "split_fragments", "syncs_done"]
