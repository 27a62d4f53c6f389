"""The host's plan of each federated round: which clients, how long each takes, who drops out.

Like the parameter server's simulator, nothing here looks at parameter values, so whole chunks
of rounds are planned before the compiled call that runs them. Round r's plan is a pure function
of (seed, r): its own generator `default_rng([seed, r, 0xFED])`, so a resumed run plans the same
rounds.

- Sampling: `clients_per_round` distinct clients, uniformly (numpy's choice without replacement);
  under DP-FedAvg each client joins independently with probability q = clients_per_round / clients
  (Poisson, the accountant's assumption: privacy/sampling.poisson_batches, DP-SGD's draw), padded
  to a fixed cap with empty slots.
- Time (simulated units, the parameter server's timing model, ps/timing.py): a client downloads
  the model (one message on config.network: latency + bytes / bandwidth, pdist/network.py), runs
  its local steps (steps x compute time, lognormal noise and straggler factor per client),
  uploads (one message).
- Faults: a client drops out mid-round with probability `dropouts.rate`, or as scripted in
  `dropouts.at` ((round, client) pairs); with a `deadline` > 0, a client that has not finished its
  upload by then is dropped too. The round lasts until the last surviving upload, or the deadline
  when someone missed it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pdist.federated import secagg
from pdist.privacy import sampling
from pdist.ps.timing import TimingModel

SALT = 0xFED


@dataclasses.dataclass
class Plan:
  """Rounds [first, first + n) of a chunk: [n, slots] arrays and per-round numbers."""
  clients: np.ndarray    # int32 client ids; empty slots hold `num_clients` (an id no one has)
  sampled: np.ndarray    # bool: the slot holds a sampled client
  survived: np.ndarray   # bool: its upload reached the server in time
  duration: np.ndarray   # [n] simulated time of each round
  phase: np.ndarray      # int8: secure aggregation's dropout phase of each slot (secagg.py)


class RoundPlanner:

  def __init__(self, fed_config, network, sizes: np.ndarray, batch_size: int, seed: int,
               bytes_down: int, bytes_up: int, poisson_cap: int | None = None):
    """`network`: config.network (or a pdist.network.Network), which prices the transfers."""
    self.num_clients = len(sizes)
    self.m = int(fed_config.clients_per_round)
    self.seed = seed
    self.cap = poisson_cap
    self.slots = poisson_cap if poisson_cap is not None else self.m
    self.steps = fed_config.local_epochs * -(-np.asarray(sizes) // batch_size)
    self.timing = TimingModel(fed_config, network, self.num_clients, [bytes_down], [bytes_up],
                              seed)
    self.rate = float(fed_config.dropouts.rate)
    self.scripted = {(int(r), int(c)) for r, c in fed_config.dropouts.at}
    self.after_upload = float(fed_config.dropouts.after_upload)
    self.deadline = float(fed_config.deadline)

  def sample(self, rng: np.random.Generator, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(slot ids, slot holds a client) of round r: without replacement, or under DP DP-SGD's own
    truncated Poisson draw (privacy/sampling.py) with clients in place of examples."""
    if self.cap is not None:
      idx, mask = sampling.poisson_batches(self.seed, r, 1, self.num_clients,
                                           self.m / self.num_clients, self.cap)
      sampled = mask[0] > 0
      return np.where(sampled, idx[0], self.num_clients).astype(np.int32), sampled
    ids = np.full(self.slots, self.num_clients, np.int32)
    ids[:self.m] = rng.choice(self.num_clients, self.m, replace=False)
    return ids, np.arange(self.slots) < self.m

  def plan(self, first: int, n: int) -> Plan:
    out = Plan(np.zeros((n, self.slots), np.int32), np.zeros((n, self.slots), bool),
               np.zeros((n, self.slots), bool), np.zeros(n),
               np.full((n, self.slots), secagg.DROPPED_BEFORE_SHARING, np.int8))
    for i, r in enumerate(range(first, first + n)):
      rng = np.random.default_rng([self.seed, r, SALT])
      ids, sampled = self.sample(rng, r)
      real = ids[sampled]
      finish = (self.timing.pull_transfer + self.timing.push_transfer
                + self.steps[real] * self.timing.compute_many(rng, real))
      quit_ = rng.random(len(real)) < self.rate
      if self.scripted:
        quit_ |= np.array([(r, int(c)) in self.scripted for c in real], bool)
      late = (finish > self.deadline) if self.deadline > 0 else np.zeros(len(real), bool)
      # a share of the dropouts leave after their upload arrived: counted as uploads
      after = (quit_ & (rng.random(len(real)) < self.after_upload) if self.after_upload > 0
               else np.zeros(len(real), bool))
      ok = (~quit_ | after) & ~late
      out.clients[i], out.sampled[i] = ids, sampled
      out.survived[i, :len(real)] = ok
      out.phase[i, :len(real)] = np.where(
          ok, np.where(quit_, secagg.UPLOADED_THEN_DROPPED, secagg.COMPLETED),
          secagg.ADVERTISED_ONLY)
      if late.any():
        out.duration[i] = self.deadline
      else:
        out.duration[i] = float(finish[ok].max()) if ok.any() else float(finish.max(initial=0.0))
    return out
