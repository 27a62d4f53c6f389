"""Secure aggregation (Bonawitz et al. 2017): the server learns only the sum of the surviving
clients' updates, even when clients drop out after the round has started.

One round, as `SecureAggregation.sum` runs it for the k clients sampled (U1):

1. Advertise keys: each client makes a fresh X25519 key pair (the `cryptography` package) and
   sends its public key; the server relays them to all.
2. Share keys: each client draws a self-mask seed b_u (32 random bytes) and Shamir-shares b_u and
   its X25519 private key t-of-k among the round's clients (shamir.py).
3. Masked input: each surviving client u uploads
       y_u = x_u + PRG(b_u) + sum_{v in U1, v > u} PRG(s_uv) - sum_{v in U1, v < u} PRG(s_uv)
   in the ring Z_{2^32}, where x_u is its update in fixed point and s_uv = HKDF(X25519(u, v)) is
   the seed u shares with v (both compute it; neither tells the server). PRG = AES-256-CTR's
   keystream. y_u alone is uniform in the ring, whatever x_u is.
4. Unmasking: with U2 the clients whose y_u arrived, if |U2| < t the round fails (SecAggError):
   the server could not remove the masks, and it never returns a wrong sum. Otherwise the
   survivors send, for each u in U2, their share of b_u, and for each dropped u, their share of
   u's private key (never both for one client). The server reconstructs b_u and removes PRG(b_u);
   from a dropped client's private key it recomputes s_uv with every survivor v and removes the
   pair masks that v added. What is left is sum_{u in U2} x_u, exactly, mod 2^32.

Fixed point: x is scaled by 2^fraction_bits and rounded; values are first clipped to
+-(2^31 - 1) / (2^fraction_bits k) so that the sum of k of them never wraps around the ring
(`clipped` counts the coordinates this touched). Decoding reads the sum as a signed 32-bit
integer and divides by the scale.

Simplifications (the security model is the protocol's honest-but-curious server): shares travel
to their holders directly rather than encrypted under a second key agreement through the server;
no signatures (the malicious-server variant); every pair of the round's clients masks (complete
graph), so the work grows with k^2 (SecAgg+, Bell et al. 2020, uses a sparse graph). The cost is
measured per round: clients' work (`client_seconds`, summed over the round's clients, who would
run in parallel) and the server's (`server_seconds`).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pdist.errors import TrainingError
from pdist.federated import shamir

RING_BITS = 32
KEY_BYTES = 32
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class SecAggError(TrainingError):
  """Too few clients survived for the server to remove the masks: the round has no sum."""


def prg(seed: bytes, length: int) -> np.ndarray:
  """`length` pseudo-random ring elements from a 32-byte seed: AES-256-CTR's keystream."""
  enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
  return np.frombuffer(enc.update(bytes(4 * length)), np.uint32)


def pair_seed(private: X25519PrivateKey, public: bytes) -> bytes:
  """The seed two clients share: HKDF-SHA256 of their X25519 agreement."""
  secret = private.exchange(X25519PublicKey.from_public_bytes(public))
  return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=b"pdist secagg pair mask").derive(secret)


@dataclasses.dataclass
class RoundCost:
  bytes_up: int          # per surviving client, the masked vector included
  bytes_down: int        # per client
  client_seconds: float  # all clients' protocol work this round (they run in parallel)
  server_seconds: float


class SecureAggregation:
  """The protocol for updates of `length` ring elements among up to `clients` per round."""

  def __init__(self, length: int, clients: int, threshold: int, fraction_bits: int = 16):
    self.length, self.clients, self.threshold = length, clients, threshold
    self.scale = float(2 ** fraction_bits)
    # the largest integer k values of which sum without wrapping, and the float it stands for
    self.int_bound = (2 ** (RING_BITS - 1) - 1) // clients
    self.bound = self.int_bound / self.scale
    self.last_cost: RoundCost | None = None

  # -- fixed point ------------------------------------------------------------------------------------
  def encode(self, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Float updates [k, length] -> (ring elements uint32 [k, length], coordinates clipped)."""
    x = np.asarray(x, np.float64)
    q = np.rint(x * self.scale)
    clipped = int(np.count_nonzero(np.abs(q) > self.int_bound))
    q = np.clip(q, -self.int_bound, self.int_bound).astype(np.int64)
    return (q & 0xFFFFFFFF).astype(np.uint32), clipped

  def decode(self, total: np.ndarray) -> np.ndarray:
    """A ring sum -> floats (the signed reading of each element, over the scale)."""
    return total.view(np.int32).astype(np.float64) / self.scale

  # -- one round ----------------------------------------------------------------------------------------
  def sum(self, inputs: np.ndarray, survived: np.ndarray) -> np.ndarray:
    """The ring sum of inputs[u] over the clients u that survived, computed the secure way.

    inputs: [k, length] uint32, one row per client that took part in the key sharing (rows of
    clients that dropped are never read); survived: [k] bool. Raises SecAggError when fewer than
    `threshold` survived.
    """
    k, length = inputs.shape
    survived = np.asarray(survived, bool)
    if length != self.length or k > self.clients:
      raise ValueError(f"secure aggregation was set up for {self.clients} clients of "
                       f"{self.length} values, got {k} of {length}")
    t_client = time.perf_counter()
    keys = [X25519PrivateKey.generate() for _ in range(k)]              # 1. advertise keys
    public = [key.public_key().public_bytes(*_RAW) for key in keys]
    self_seeds = [os.urandom(KEY_BYTES) for _ in range(k)]                # 2. share keys
    private = [key.private_bytes_raw() for key in keys]
    secrets = shamir.to_field(np.frombuffer(b"".join(s + p for s, p in zip(self_seeds, private)),
                                            np.uint8).reshape(k * 2, KEY_BYTES))
    points = np.arange(1, k + 1)
    shares = shamir.split(secrets, self.threshold, points).reshape(k, k, 2, -1)  # [holder, owner]
    masked = {}                                                          # 3. masked input
    pair_masks = np.zeros((k, length), np.uint32)
    for u in range(k):
      for v in range(u + 1, k):
        if survived[u] or survived[v]:
          mask = prg(pair_seed(keys[u], public[v]), length)
          pair_masks[u] += mask
          pair_masks[v] -= mask
    for u in np.flatnonzero(survived):
      masked[u] = inputs[u] + prg(self_seeds[u], length) + pair_masks[u]
    client_seconds = time.perf_counter() - t_client

    t_server = time.perf_counter()                                        # 4. unmasking
    alive = np.flatnonzero(survived)
    if len(alive) < self.threshold:
      raise SecAggError(f"secure aggregation: {len(alive)} of {k} clients survived the round, "
                        f"fewer than the threshold {self.threshold}; the masks cannot be removed "
                        "and the round has no sum")
    total = np.zeros(length, np.uint32)
    for u in alive:
      total += masked[u]
    holders = alive[:self.threshold]
    dropped = np.flatnonzero(~survived)
    # survivors send one share per client: of b_u for survivors, of the private key for dropouts
    wanted = np.where(survived, 0, 1)
    held = shares[holders][:, np.arange(k), wanted]                      # [t, k, 16]
    recovered = shamir.from_field(shamir.combine(held, points[holders])).reshape(k, KEY_BYTES)
    for u in alive:
      total -= prg(recovered[u].tobytes(), length)
    for u in dropped:
      key = X25519PrivateKey.from_private_bytes(recovered[u].tobytes())
      for v in alive:
        mask = prg(pair_seed(key, public[v]), length)
        total += mask if v > u else -mask    # v added -mask if u < v, +mask if u > v
    server_seconds = time.perf_counter() - t_server
    share_bytes = 2 * (KEY_BYTES // 2) * 4        # two secrets of 16 field elements, 4 bytes each
    self.last_cost = RoundCost(
        bytes_up=KEY_BYTES + (k - 1) * share_bytes + 4 * length + (k - 1) * share_bytes // 2,
        bytes_down=(k - 1) * (KEY_BYTES + share_bytes), client_seconds=client_seconds,
        server_seconds=server_seconds)
    return total
