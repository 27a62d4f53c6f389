"""pdist.network, the one network-time model: closed forms of a message and the collectives."""

import ml_collections
import pytest

from pdist import network
from pdist.network import Network


def _net(latency=0.5, bandwidth=100.0):
  return Network(ml_collections.ConfigDict({"latency": latency, "bandwidth": bandwidth}))


def test_a_message_costs_latency_plus_bytes_over_bandwidth():
  n = _net()
  assert n.message(1000) == 0.5 + 1000 / 100
  assert n.wire(1000) == 10.0 and n.message(0) == 0.5


def test_ring_all_reduce():
  # 4 peers, 1000 bytes: 2 (N - 1) = 6 messages of 1000 / 4 = 250 bytes each
  assert _net().all_reduce(1000, 4) == 2 * 3 * (0.5 + 250 / 100) == 18.0


def test_ring_all_gather_and_reduce_scatter():
  # half the all-reduce: N - 1 = 3 messages of 250 bytes
  assert _net().all_gather(1000, 4) == 3 * (0.5 + 250 / 100) == 9.0
  assert _net().reduce_scatter(1000, 4) == 9.0
  n = _net(latency=0.0)
  assert n.all_reduce(1000, 4) == 2 * n.all_gather(1000, 4)


def test_gossip_sends_the_whole_array_to_each_neighbour_in_turn():
  assert _net().gossip(1000, 2) == 2 * (0.5 + 1000 / 100) == 21.0
  assert _net().gossip(1000, 0) == 0.0


def test_unlimited_bandwidth_costs_latency_only():
  n = _net(latency=0.25, bandwidth=0.0)
  assert n.wire(1e12) == 0.0 and n.message(1e12) == 0.25
  assert n.all_reduce(1e12, 4) == 6 * 0.25 and n.all_gather(1e12, 4) == 3 * 0.25
  assert n.gossip(1e12, 3) == 3 * 0.25
  assert _net(latency=0.0, bandwidth=0.0).all_reduce(1e12, 8) == 0.0


@pytest.mark.parametrize("peers", [0, 1])
def test_a_collective_among_one_peer_costs_nothing(peers):
  n = _net()
  assert n.all_reduce(1000, peers) == 0.0 and n.all_gather(1000, peers) == 0.0


def test_the_config_group_defaults_to_a_free_network():
  n = Network(network.network_config())
  assert (n.latency, n.bandwidth) == (0.0, 0.0) and n.message(10 ** 9) == 0.0
