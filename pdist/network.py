"""The one network-time model: what a message or a collective costs in simulated time.

Every strategy that reports simulated time (`sim_time` in its rows: sync, local, gossip, ps,
federated, codistill) prices its communication here, from `config.network`:

  latency     simulated time units per message (with seconds as the unit: 0.05 = 50 ms)
  bandwidth   bytes per time unit per link; 0 = unlimited (with seconds: 1 Gbit/s = 1.25e8)

A message of B bytes takes latency + B / bandwidth. Collectives over N peers use the textbook
bandwidth-optimal algorithms (Thakur, Rabenseifner and Gropp 2005; the ring of NCCL and gloo):

  all-reduce (ring)        2 (N-1) messages of B/N bytes:  2 (N-1)/N * B / bandwidth + 2 (N-1) latency
  all-gather, reduce-scatter (ring; B = the whole array): (N-1)/N * B / bandwidth + (N-1) latency
  gossip step              one message of B bytes to each of `degree` neighbours, sent one after
                           another over the node's one link: degree * (latency + B / bandwidth)

so a collective among N = 1 peers costs nothing. `*_sent` give the bytes one node sends in each:
rows' `bytes_sent` (sync, local, gossip) are those wire bytes, so the strategies compare. The time unit is whatever the strategy's compute
time is measured in (config.sync.compute_time, config.ps.compute_time.mean, ...).
"""

from __future__ import annotations

import ml_collections

from pdist.registry import check_positive

GBIT = 1.25e8   # bytes per second in 1 Gbit/s

# the shared fields a strategy that prices its communication reads (registry.Entry.reads)
READS = ("network.latency", "network.bandwidth")


def network_config() -> ml_collections.ConfigDict:
  """config.network: the links every simulated-time strategy shares."""
  c = ml_collections.ConfigDict()
  c.latency = 0.0     # per message, simulated time units
  c.bandwidth = 0.0   # bytes per time unit per link; 0 = unlimited
  return c


def validate_network(config) -> None:
  check_positive(config, "network.latency", "network.bandwidth", allow_zero=True)


class Network:
  """Prices messages and collectives for one config.network."""

  def __init__(self, network_config):
    self.latency = float(network_config.latency)
    self.bandwidth = float(network_config.bandwidth)

  def wire(self, nbytes: float) -> float:
    """Time the bytes alone take on one link (no latency)."""
    return nbytes / self.bandwidth if self.bandwidth > 0 else 0.0

  def message(self, nbytes: float) -> float:
    """One message of `nbytes` bytes: latency + bytes / bandwidth."""
    return self.latency + self.wire(nbytes)

  def all_reduce(self, nbytes: float, peers: int) -> float:
    """Ring all-reduce of an array of `nbytes` over `peers` (reduce-scatter then all-gather)."""
    if peers <= 1:
      return 0.0
    return 2 * (peers - 1) * (self.latency + self.wire(nbytes / peers))

  def all_gather(self, nbytes: float, peers: int) -> float:
    """Ring all-gather of an array whose whole size is `nbytes` (each peer holds 1/peers)."""
    if peers <= 1:
      return 0.0
    return (peers - 1) * (self.latency + self.wire(nbytes / peers))

  reduce_scatter = all_gather   # the same ring, run the other way

  # -- bytes one node sends over its link (`bytes_sent` in rows: one meaning for every strategy) --
  @staticmethod
  def all_reduce_sent(nbytes: float, peers: int) -> float:
    """A ring all-reduce of `nbytes`: 2 (N-1) messages of nbytes / N."""
    return 2 * (peers - 1) * nbytes / peers if peers > 1 else 0.0

  @staticmethod
  def all_gather_sent(nbytes: float, peers: int) -> float:
    """A ring all-gather (or reduce-scatter) of an array of `nbytes` in all: (N-1) messages of
    nbytes / N."""
    return (peers - 1) * nbytes / peers if peers > 1 else 0.0

  reduce_scatter_sent = all_gather_sent

  @staticmethod
  def gossip_sent(nbytes: float, degree: int) -> float:
    """A gossip step: the whole `nbytes` to each of `degree` neighbours."""
    return degree * nbytes

  def gossip(self, nbytes: float, degree: int) -> float:
    """One gossip step: the whole `nbytes` to each of `degree` neighbours over one link."""
    return degree * self.message(nbytes)
