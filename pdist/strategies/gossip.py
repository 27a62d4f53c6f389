"""`gossip`: decentralized SGD without a server (D-PSGD, Lian et al. 2017) on the data mesh.

Each device holds one replica (pdist/strategies/replicas.py). Every update, replica i takes a step
of config.optim on its slice of the global batch, then averages with its neighbours:

    theta_i <- sum_j W_ij theta_j

(adapt then combine: the mixing follows the local step, so with the complete graph every replica
holds sync's parameters after every update). W is doubly stochastic: a replica weighs itself and
each of its d distinct in-neighbours 1/(d+1). The graphs over N replicas, config.gossip.topology:

  ring         i <- i-1, i+1                                    d = 2 (1 when N = 2)
  torus        a rows x b columns, a*b = N, a the largest divisor <= sqrt(N); i <- its four grid
               neighbours with wrap-around (distinct ones only: d = 2 or 3 when a side is 2; a
               prime N has a = 1, and the torus is the ring)
  exponential  i <- i - 2^k (mod N), k = 0 .. ceil(log2 N) - 1  (Ying et al. 2021's static
               exponential graph; directed, d = ceil(log2 N))
  complete     i <- every j: W = 11^T / N, one all-reduce (pmean)

Each neighbour's parameters arrive by a collective permute on the mesh (one `ppermute` per shift);
the complete graph is one all-reduce. The replicas' mean is what the run evaluates and saves.
Rows carry `consensus` = mean_i ||theta_i - mean theta||, `syncs` (one exchange an update),
`bytes_sent` (per replica: its parameters to each out-neighbour) and `sim_time`
(config.sync.compute_time per update plus pdist/network.py's gossip step: d messages of the
model's bytes over the node's link; the complete graph as a ring all-reduce).
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np

from pdist import optim
from pdist.parallel.mesh import AXIS
from pdist.registry import STRATEGIES, check_choice
from pdist.strategies import replicas as replicas_lib

TOPOLOGIES = ("ring", "torus", "exponential", "complete")


def gossip_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.topology = "ring"   # ring / torus / exponential / complete
  return c


def validate_gossip(config) -> None:
  check_choice(config, "gossip.topology", TOPOLOGIES)
  replicas_lib.validate_mesh(config, "gossip")


def torus_shape(n: int) -> tuple[int, int]:
  a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
  return a, n // a


def in_neighbours(topology: str, n: int) -> list[list[int]]:
  """For each replica i, the distinct j != i it averages with (its in-neighbours)."""
  out = []
  for i in range(n):
    if topology == "ring":
      nb = [(i - 1) % n, (i + 1) % n]
    elif topology == "torus":
      a, b = torus_shape(n)
      r, c = divmod(i, b)
      nb = [((r - 1) % a) * b + c, ((r + 1) % a) * b + c, r * b + (c - 1) % b, r * b + (c + 1) % b]
    elif topology == "exponential":
      nb = [(i - 2 ** k) % n for k in range(math.ceil(math.log2(n)))] if n > 1 else []
    else:
      nb = list(range(n))
    seen = []
    for j in nb:
      if j != i and j not in seen:
        seen.append(j)
    out.append(seen)
  return out


def mixing_matrix(topology: str, n: int) -> np.ndarray:
  """W (rows: receivers): W_ii = W_ij = 1/(d+1) for each in-neighbour j of i."""
  w = np.zeros((n, n))
  for i, nb in enumerate(in_neighbours(topology, n)):
    w[i, [i] + nb] = 1.0 / (len(nb) + 1)
  return w


def permutations(topology: str, n: int) -> list[list[tuple[int, int]]]:
  """The in-neighbour lists as collective permutes: the k-th permute sends j -> i for the k-th
  in-neighbour j of every replica i (every graph here is regular, so each is a permutation)."""
  nbs = in_neighbours(topology, n)
  degree = len(nbs[0])
  perms = [[(nbs[i][k], i) for i in range(n)] for k in range(degree)]
  for perm in perms:   # a permute must be one-to-one
    if sorted(s for s, _ in perm) != list(range(n)):
      raise ValueError(f"{topology} graph over {n} replicas is not a union of permutations")
  return perms


@STRATEGIES.register("gossip", config=gossip_config, validate=validate_gossip,
                     reads=replicas_lib.READS, uses=lambda c: ("sync",))
class Gossip(replicas_lib.Replicas):

  def __init__(self, config, task, pipeline=None):
    super().__init__(config, task, pipeline)
    self.topology = config.gossip.topology
    n = self.num_devices
    self.perms = [] if self.topology == "complete" else permutations(self.topology, n)
    self.degree = n - 1 if self.topology == "complete" else len(self.perms)
    shapes = jax.tree.leaves(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
    self.model_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in shapes)

  def params(self, state):
    return self.mean_params(state)

  def update(self, state, batch):
    rng = jax.random.fold_in(state["step_key"], state["step"])
    mine, opt = self.my_replica(state)
    grads, (loss, aux) = self._grad(mine, batch, rng)
    mine, opt = optim.apply_gradient(self.tx, mine, opt, grads)
    mine = self.mix(mine)
    new = dict(state, step=state["step"] + 1)
    return self.store_replica(new, mine, opt), {"loss": loss, **aux}

  def mix(self, mine):
    """theta_i <- sum_j W_ij theta_j: one collective permute per in-neighbour."""
    if self.topology == "complete":
      return replicas_lib.varying(jax.lax.pmean(mine, AXIS))
    total = mine
    for perm in self.perms:
      got = jax.lax.ppermute(mine, AXIS, perm)
      total = jax.tree.map(lambda a, b: a + b, total, got)
    return jax.tree.map(lambda x: x / (len(self.perms) + 1), total)

  def communication(self, step: int, network=None) -> dict[str, float]:
    n, net = self.num_devices, network or self.network
    if self.topology == "complete":
      exchange = net.all_reduce(self.model_bytes, n)
      sent = net.all_reduce_sent(self.model_bytes, n)
    else:
      exchange = net.gossip(self.model_bytes, self.degree)
      sent = net.gossip_sent(self.model_bytes, self.degree)
    return {"syncs": float(step), "bytes_sent": float(step * sent),
            "sim_time": step * (self.compute_time + exchange)}


__all__ = ["Gossip", "in_neighbours", "mixing_matrix", "permutations", "torus_shape"]
