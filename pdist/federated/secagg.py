"""Secure aggregation: the server learns only the sum of the uploaded updates, even when clients
drop out at any step of the round. SecAgg (Bonawitz et al. 2017, "Practical Secure Aggregation
for Privacy-Preserving Machine Learning", the honest-but-curious variant) on the complete graph,
and SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead") on a random sparse graph: a client masks with, and Shamir-shares to, only its
neighbours.

One round, as `SecureAggregation.sum` runs it for the k clients sampled:

0. Setup (SecAgg+): the server draws a round seed and sends it with the round's parameters; from
   it every party computes the same random permutation of the k clients onto a ring (numpy's
   PCG64 seeded with it), and the graph is the Harary graph H(degree, k) on that ring: each client
   is a neighbour of the degree/2 clients before it and the degree/2 after it (Bell et al.; the
   construction of Flower's SecAgg+ and Google's federated-compute). N(u) is u's closed
   neighbourhood (u itself and its neighbours: degree + 1 clients). SecAgg: N(u) = all k clients.
1. Advertise keys: each client makes a fresh X25519 key pair (the `cryptography` package) and
   sends its public key; the server relays to each client its neighbours' keys.
2. Share keys: each client draws a self-mask seed b_u (32 bytes, os.urandom) and Shamir-shares b_u
   and its X25519 private key t-of-|N(u)| among N(u) (shamir.py; threshold t per neighbourhood).
3. Masked input: each client u uploads
       y_u = x_u + PRG(b_u) + sum_{v in N(u), v shared keys} +-PRG(s_uv)     in Z_{2^32},
   x_u its update in fixed point, s_uv = HKDF-SHA256(X25519(u, v)) the seed only u and v can
   compute, the sign + for whichever of u, v sits earlier on the ring and - for the other, so
   the pair's masks cancel in a sum holding both. PRG = AES-256-CTR's keystream. y_u alone is
   uniform in the ring whatever x_u is.
4. Unmasking: the server tells the clients who uploaded; every client v that answers sends, for
   each client u of N(v) that shared keys, its share of b_u if u uploaded or else its share of
   u's private key: never both for one client (checked: AssertionError if a request asked for
   both). For each u whose secret it needs, the server picks t of the answering members of N(u)
   with its numpy Generator (any t give the same secret) and reconstructs; with too few the round
   fails (SecAggError) and never returns a wrong sum. It removes PRG(b_u) of every upload, and
   from each dropped client's private key the pair masks its uploading neighbours added. What is
   left is sum_{u uploaded} x_u, exactly, mod 2^32.

Dropout phases (`phase`, one code per client, how far it got; "dropped during unmasking" is
UPLOADED_THEN_DROPPED from the server's view):

- DROPPED_BEFORE_SHARING (0): advertised its keys, left before sending shares. Outside the round:
  no one masks with it, its input is not in the sum, nothing of it is reconstructed.
- ADVERTISED_ONLY (1, also DROPPED_BEFORE_UPLOAD): advertised and shared keys, never uploaded.
  Its input is not in the sum; its neighbours that uploaded did mask with it, so the server
  reconstructs its private key (if it has such a neighbour) and removes those pair masks.
- UPLOADED_THEN_DROPPED (2): its masked input arrived (it is in the sum), it does not answer the
  unmasking; the server reconstructs its b_u from its neighbours' shares.
- COMPLETED (3): uploaded and answers the unmasking.

Failure (SecAggError, one line): fewer than t clients answer the unmasking, or (SecAgg+) the
closed neighbourhood of a client whose b_u or key must be reconstructed has fewer than t
answering members.

Parameters of SecAgg+ (Bell et al. 2020, CCS '20 / ePrint 2020/704: the semi-honest protocol on
a k-regular graph instantiated with a randomly permuted Harary graph, and the conditions of its
security and correctness theorem): with n clients of which at most a fraction gamma are corrupt
(colluding with the server) and at most a fraction delta drop out, the protocol is secure except
with probability 2^-sigma and correct (the sum is computed) except with probability 2^-eta when
  (i)   the graph stays connected once the corrupt and dropped clients are removed (else the
        server learns the sums of the pieces): a set disconnecting a Harary graph of degree d
        holds d/2 consecutive ring positions in two places, so a union bound over the gap pairs
        bounds the probability by n (n - d - 1) / 2 * C(B, d) / C(n, d), B = (gamma + delta) n,
        which must be below 2^-(sigma + 1);
  (ii)  no client has t or more corrupt neighbours (they could reconstruct both its secrets):
        n Pr[X >= t] < 2^-(sigma + 1), X ~ Hypergeometric(n, gamma n, d) its corrupt neighbours;
  (iii) every client has at least t surviving neighbours (its secrets can be reconstructed):
        n Pr[Y < t] < 2^-eta, Y ~ Hypergeometric(n, (1 - delta) n, d) its surviving neighbours.
`harary_parameters(n, gamma, delta, sigma=40, eta=20)` returns the smallest even degree meeting
all three and the smallest t meeting (ii), the parameter search of Google's implementation of
the paper (federated-compute, fcp/secagg/server/graph_parameter_finder.cc, whose published values
the tests check). The degree grows as O(log n + sigma): gamma = delta = 0.05 gives n = 100 ->
degree 12, t 6; 1,000 -> 30, 17; 10,000 -> 34, 20 (gamma 0.05, delta 0.33: 28, 72, 86). For SecAgg
on the complete graph the same reasoning asks t > gamma k (honest-but-curious server) and at
least t answers (at most k - t dropouts); the caller uses a majority.

Fixed point: x is scaled by 2^fraction_bits and rounded; values are first clipped to
+-(2^31 - 1) / (2^fraction_bits k) so that the sum of k of them never wraps around the ring
(`clipped` counts the coordinates this touched). Decoding reads the sum as a signed 32-bit
integer and divides by the scale.

Simplifications (the security model is the honest-but-curious server): shares travel to their
holders directly in this simulation, not encrypted under a second X25519 agreement and relayed by
the server as deployed (the byte and operation counts of `RoundCost` do count that encryption: a
second public key, AES-GCM ciphertexts with nonce and tag, one more agreement per neighbour); no
signatures or consistency-check round (the malicious-server variant); the graph seed is drawn by
the server (a malicious server would need a coin flip with the clients). Each pair's mask seed is
computed once for both clients; the counts charge both.

Cost (`last_cost`, a RoundCost): measured seconds of the clients' work (summed over the clients,
who would run in parallel) and of the server's, and deterministic counts, exact functions of (k,
L, the graph, the phases), for a caller to turn into simulated time: bytes up and down per client
per protocol step, and key agreements, PRG output and Shamir shares per client and for the
server. Work per client grows with its degree: O(k L) for SecAgg, O(L log k) for SecAgg+.
"""

from __future__ import annotations

import dataclasses
import math
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
_PAIR_INFO = b"pdist secagg pair mask"
_NONCE = b"\0" * 16
_CTR = modes.CTR(_NONCE)   # one mode object for every keystream (fixed nonce: each key used once)
_GRAPH_SALT = 0x5ECA66

# -- dropout phases: how far a client got in the round ---------------------------------------------
DROPPED_BEFORE_SHARING = 0   # advertised keys, sent no shares: outside the round
ADVERTISED_ONLY = 1          # advertised and shared keys, never uploaded: input not in the sum
DROPPED_BEFORE_UPLOAD = ADVERTISED_ONLY
UPLOADED_THEN_DROPPED = 2    # upload arrived (in the sum), does not answer the unmasking
COMPLETED = 3                # uploaded and answers the unmasking
PHASE_NAMES = ("dropped_before_sharing", "advertised_only", "uploaded_then_dropped", "completed")

# -- message sizes (bytes) of the deployed protocol, for RoundCost ---------------------------------
STEPS = ("advertise_keys", "share_keys", "masked_input", "unmasking")
ID_BYTES = 4                                     # a client's index in the round
PUBLIC_KEYS_BYTES = 2 * KEY_BYTES                # two X25519 public keys: shares' and masks'
SHARE_BYTES = 4 * shamir.CHUNKS                  # one share of a 32-byte secret (9 field elements)
CIPHERTEXT_BYTES = 2 * ID_BYTES + 2 * SHARE_BYTES + 12 + 16   # ids, 2 shares, GCM nonce + tag


class SecAggError(TrainingError):
  """Too few clients answered for the server to remove the masks: the round has no sum."""


def prg(seed: bytes, length: int) -> np.ndarray:
  """`length` pseudo-random ring elements from a 32-byte seed: AES-256-CTR's keystream."""
  enc = Cipher(algorithms.AES(seed), _CTR).encryptor()
  return np.frombuffer(enc.update(bytes(4 * length)), np.uint32)


def pair_seed(private: X25519PrivateKey, public) -> bytes:
  """The seed two clients share: HKDF-SHA256 of their X25519 agreement (public: key or bytes)."""
  if isinstance(public, bytes):
    public = X25519PublicKey.from_public_bytes(public)
  return _pair(private, public)


def _pair(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
  return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=_PAIR_INFO).derive(
      private.exchange(public))


# -- the graph -------------------------------------------------------------------------------------
def _layout(k: int, complete: bool, degree: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
  """(closed-neighbourhood ring offsets, 0 first; the masking offsets as (offset, rows)).

  Client at ring position i has neighbours at positions (i + offsets) % k. Each unordered pair of
  neighbours is one (offset o, row i < rows) of the masking list: the pair (i, (i + o) % k).
  """
  if complete or degree >= k - 1:
    masking = [(o, k) for o in range(1, (k - 1) // 2 + 1)]
    if k >= 2 and k % 2 == 0:
      masking.append((k // 2, k // 2))
    return np.arange(k), masking
  h = degree // 2
  offsets = [0] + [s * o for o in range(1, h + 1) for s in (1, -1)]
  return np.asarray(offsets), [(o, k) for o in range(1, h + 1)]


def ring_permutation(k: int, graph_seed: int) -> np.ndarray:
  """Ring position -> client: the random permutation every party derives from the round seed."""
  return np.random.default_rng([int(graph_seed), _GRAPH_SALT]).permutation(k)


def harary_graph(n: int, degree: int, seed: int) -> np.ndarray:
  """SecAgg+'s graph: [n, degree] neighbours of each client (client ids, itself excluded), the
  Harary graph H(degree, n) on the ring of `ring_permutation(n, seed)`. degree even, < n - 1."""
  if degree % 2 or not 2 <= degree < n - 1:
    raise ValueError(f"a Harary graph of {n} clients needs an even degree in [2, {n - 2}], "
                     f"got {degree}")
  perm = ring_permutation(n, seed)
  offsets, _ = _layout(n, False, degree)
  pos = np.empty(n, np.int64)
  pos[perm] = np.arange(n)
  return perm[(pos[:, None] + offsets[None, 1:]) % n]


def harary_parameters(n: int, gamma: float, delta: float, sigma: float = 40,
                      eta: float = 20) -> tuple[int, int]:
  """(degree, threshold) of SecAgg+ for n clients, at most gamma n corrupt and delta n dropping:
  the smallest even degree whose random Harary graph meets Bell et al. 2020's conditions (see the
  module docstring: connectivity of the honest survivors, fewer than t corrupt neighbours, at
  least t surviving ones) at statistical security sigma and correctness eta, and the smallest t
  that does. The threshold counts the closed neighbourhood (degree + 1 holders, the client's own
  share included). Semi-honest setting; gamma + delta <= 0.9. Raises ValueError when no degree
  below n - 1 works (then use the complete graph)."""
  from scipy.special import gammaln
  if not (0 <= gamma < 1 and 0 <= delta < 1 and gamma + delta <= 0.9) or n < 4:
    raise ValueError(f"harary_parameters needs n >= 4, gamma and delta in [0, 1) and "
                     f"gamma + delta <= 0.9; got n={n}, gamma={gamma}, delta={delta}")
  small = 1e-14
  corrupt = math.floor((gamma + small) * n)
  bad = corrupt + math.floor((delta + small) * n)
  surviving = math.ceil((1 - delta - small) * n)
  log_q_graph = -(sigma + 1) * math.log(2)       # sigma split between two events: (i) and (ii)
  log_q_sec = log_q_graph - math.log(n)          # (ii) per client, union bound over n
  log_q_cor = -eta * math.log(2) - math.log(n)

  def log_choose(a, b):
    return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)

  def pmf(marked, d):      # hypergeometric: marked among d drawn from n, x = 0..d
    x = np.arange(d + 1)
    ok = (x <= marked) & (d - x <= n - marked)
    xs = np.where(ok, x, 0)
    out = np.exp(log_choose(marked, xs) + log_choose(n - marked, d - xs) - log_choose(n, d))
    return np.where(ok, out, 0.0)

  for d in range(2, n - 1, 2):
    if d <= bad:             # (i): a bound on the honest survivors' graph being disconnected
      log_p = (math.log(n) + math.log(n - d - 1) - math.log(2) + math.lgamma(bad + 1)
               + math.lgamma(n - d + 1) - math.lgamma(n + 1) - math.lgamma(bad - d + 1))
      if log_p >= log_q_graph:
        continue
    # (ii): t1 = min{x : Pr[corrupt neighbours > x] < q}; t > t1
    p_bad = pmf(corrupt, d)
    above = np.concatenate([np.cumsum(p_bad[::-1])[::-1][1:], [0.0]])   # Pr[X > x]
    t1 = int(np.argmax(above < math.exp(log_q_sec)))
    # (iii): t2 = 1 + max{y : Pr[surviving neighbours <= y] < q}; t <= t2
    cdf = np.cumsum(pmf(surviving, d))
    t2 = int(np.flatnonzero(cdf < math.exp(log_q_cor)).max(initial=-1)) + 1
    if t2 >= max(t1 + 1, 2):      # the threshold returned must itself meet (iii)
      return d, max(t1 + 1, 2)
  raise ValueError(f"no Harary graph of degree below {n - 1} meets the conditions for n={n}, "
                   f"gamma={gamma}, delta={delta}; use the complete graph")


# -- one round -------------------------------------------------------------------------------------
@dataclasses.dataclass
class RoundCost:
  """One round's cost. Per-client arrays are in the order of `inputs`' rows; `bytes_up` and
  `bytes_down` are [k, 4] with columns STEPS = (advertise_keys, share_keys, masked_input,
  unmasking): the public keys; the key list down and the encrypted shares up; the forwarded
  encrypted shares down and the masked vector up; the list of uploaders down and the unmasking
  shares up. Counts follow the deployed protocol (see the module docstring)."""
  clients: int
  length: int
  degree: int                          # neighbours per client (k - 1 for the complete graph)
  threshold: int
  phase: np.ndarray                    # [k] int
  bytes_up: np.ndarray                 # [k, 4] int64
  bytes_down: np.ndarray               # [k, 4] int64
  client_keys_generated: np.ndarray    # [k] X25519 key pairs (2 each: shares', masks')
  client_key_agreements: np.ndarray    # [k] X25519 agreements (share encryption + masks)
  client_prg_elements: np.ndarray      # [k] ring elements of PRG output (self and pair masks)
  client_shares_made: np.ndarray       # [k] Shamir shares of 32-byte secrets made (2 per holder)
  server_key_agreements: int           # to recompute dropped clients' pair masks
  server_prg_elements: int             # ring elements expanded to remove masks
  server_secrets_reconstructed: int    # b_u and private keys
  server_shares_combined: int          # threshold x secrets reconstructed
  client_seconds: float                # measured: all clients' work (they run in parallel)
  server_seconds: float                # measured

  @property
  def bytes_up_per_client(self) -> np.ndarray:
    return self.bytes_up.sum(axis=1)

  @property
  def bytes_down_per_client(self) -> np.ndarray:
    return self.bytes_down.sum(axis=1)


@dataclasses.dataclass
class Round:
  """One simulated round between `clients_round` and `unmask`. Rows are in ring-position order:
  row i is client perm[i]. `masked` is what reached the server; the keys, seeds and shares are the
  clients' (kept for the simulation and the tests; the server's code reads only the shares that
  its requests name)."""
  phase: np.ndarray          # [k] by ring position
  perm: np.ndarray           # ring position -> client (row of `inputs`)
  offsets: np.ndarray        # closed-neighbourhood ring offsets, 0 (the client itself) first
  masking: list              # [(offset, rows)]: each pair of neighbours once
  graph_seed: int
  public: list               # [k] X25519PublicKey (the advertised mask keys)
  private: list              # [k] 32-byte private keys (client secrets)
  self_seeds: list           # [k] b_u (client secrets)
  shares: np.ndarray         # [k owner, |N|, 2 (b, key), CHUNKS]: shares[i, j] held by neighbour j
  masked: np.ndarray         # [k, L] uint32 uploads; rows of clients that did not upload are zero
  client_seconds: float
  requests: dict = dataclasses.field(default_factory=dict)   # kind -> (owners, holders) used

  @property
  def k(self) -> int:
    return len(self.perm)

  @property
  def position(self) -> np.ndarray:
    pos = np.empty(self.k, np.int64)
    pos[self.perm] = np.arange(self.k)
    return pos

  def neighbourhood(self) -> np.ndarray:
    """[k, |N|] ring positions of each position's closed neighbourhood (itself first)."""
    return (np.arange(self.k)[:, None] + self.offsets[None, :]) % max(self.k, 1)

  def uploads(self) -> dict[int, np.ndarray]:
    """The server's view: client -> its masked upload."""
    return {int(self.perm[i]): self.masked[i] for i in np.flatnonzero(self.phase >= 2)}


class SecureAggregation:
  """The protocol for updates of `length` ring elements among up to `clients` per round.

  graph="complete": SecAgg, threshold t of the round's clients. graph="harary": SecAgg+ with
  `degree` neighbours per client (even) and threshold t per closed neighbourhood (<= degree + 1;
  pick both with `harary_parameters`, or build with `SecureAggregation.secagg_plus`). A round
  with no more than degree + 1 clients uses the complete graph. `seed` seeds the Generator used
  when `sum` is given none (which t answers to use, the round's graph seed).
  """

  def __init__(self, length: int, clients: int, threshold: int, fraction_bits: int = 16, *,
               graph: str = "complete", degree: int | None = None, seed: int = 0):
    if graph not in ("complete", "harary"):
      raise ValueError(f"graph must be 'complete' or 'harary', got {graph!r}")
    if graph == "harary":
      if degree is None or degree % 2 or degree < 2:
        raise ValueError(f"graph='harary' needs an even degree >= 2, got {degree}")
      if not 1 <= threshold <= degree + 1:
        raise ValueError(f"the threshold per neighbourhood must be in [1, degree + 1 = "
                         f"{degree + 1}], got {threshold}")
    elif not 1 <= threshold <= clients:
      raise ValueError(f"the threshold must be in [1, clients = {clients}], got {threshold}")
    self.length, self.clients, self.threshold = length, clients, threshold
    self.graph, self.degree = graph, degree
    self.scale = float(2 ** fraction_bits)
    # the largest integer k values of which sum without wrapping, and the float it stands for
    self.int_bound = (2 ** (RING_BITS - 1) - 1) // clients
    self.bound = self.int_bound / self.scale
    self.rng = np.random.default_rng(seed)
    self.last_cost: RoundCost | None = None
    self._buffer = bytearray()

  @classmethod
  def secagg_plus(cls, length: int, clients: int, gamma: float, delta: float,
                  fraction_bits: int = 16, sigma: float = 40, eta: float = 20, seed: int = 0):
    """SecAgg+ with degree and threshold from `harary_parameters(clients, gamma, delta, ...)`."""
    degree, threshold = harary_parameters(clients, gamma, delta, sigma, eta)
    return cls(length, clients, threshold, fraction_bits, graph="harary", degree=degree, seed=seed)

  # -- fixed point ---------------------------------------------------------------------------------
  def encode(self, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Float updates [k, length] -> (ring elements uint32 [k, length], coordinates clipped)."""
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
      raise SecAggError("secure aggregation: a client's update is not finite (NaN or inf); it "
                        "cannot be encoded in fixed point, and the round would sum a wrong value")
    q = np.rint(x * self.scale)
    clipped = int(np.count_nonzero(np.abs(q) > self.int_bound))
    q = np.clip(q, -self.int_bound, self.int_bound).astype(np.int64)
    return (q & 0xFFFFFFFF).astype(np.uint32), clipped

  def decode(self, total: np.ndarray) -> np.ndarray:
    """A ring sum -> floats (the signed reading of each element, over the scale)."""
    return total.view(np.int32).astype(np.float64) / self.scale

  # -- one round -----------------------------------------------------------------------------------
  def sum(self, inputs: np.ndarray, phase: np.ndarray, rng: np.random.Generator | int | None = None,
          *, graph_seed: int | None = None) -> np.ndarray:
    """The ring sum of inputs[u] over the clients u whose phase is UPLOADED_THEN_DROPPED or
    COMPLETED, computed the secure way; sets `last_cost` (also when the round fails).

    inputs: [k, length] uint32, one row per client of the round (rows of clients that did not
    upload are never read); phase: [k] phase codes (a bool array is read as True -> COMPLETED,
    False -> ADVERTISED_ONLY: the old `survived`); rng: which t answers to use and, unless
    `graph_seed` is given, the round's graph seed (None: the instance's Generator). Raises
    SecAggError when too few clients answer the unmasking.
    """
    rng = self._generator(rng)
    return self.unmask(self.clients_round(inputs, phase, rng, graph_seed=graph_seed), rng)

  def _generator(self, rng) -> np.random.Generator:
    if rng is None:
      return self.rng
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

  def _keystreams(self, seeds, rows: int) -> np.ndarray:
    """[rows, length] uint32 view of a reused buffer: row r is PRG(seeds[r]) (zero if None)."""
    nb = 4 * self.length
    if len(self._buffer) < rows * nb + 16:
      self._buffer = bytearray(rows * nb + 16)
    out = np.frombuffer(self._buffer, np.uint32, count=rows * self.length).reshape(
        rows, self.length)
    view, zeros = memoryview(self._buffer), bytes(nb)
    for r, seed in enumerate(seeds):
      if seed is None:
        out[r] = 0
      else:
        Cipher(algorithms.AES(seed), _CTR).encryptor().update_into(
            zeros, view[r * nb:(r + 1) * nb + 15])
    return out

  def clients_round(self, inputs: np.ndarray, phase: np.ndarray,
                    rng: np.random.Generator | int | None = None, *,
                    graph_seed: int | None = None) -> Round:
    """Steps 0-3 (the clients' side): keys, shares, masked uploads. See `sum`."""
    inputs = np.asarray(inputs)
    k, length = inputs.shape
    phase = np.asarray(phase)
    if phase.dtype == bool:
      phase = np.where(phase, COMPLETED, ADVERTISED_ONLY)
    phase = phase.astype(np.int64)
    if length != self.length or k > self.clients or phase.shape != (k,):
      raise ValueError(f"secure aggregation was set up for {self.clients} clients of "
                       f"{self.length} values, got inputs {inputs.shape} and phases "
                       f"{phase.shape}")
    if phase.size and (phase.min() < DROPPED_BEFORE_SHARING or phase.max() > COMPLETED):
      raise ValueError(f"phases must be in [0, 3] ({', '.join(PHASE_NAMES)}), got "
                       f"{sorted(set(phase.tolist()))}")
    rng = self._generator(rng)
    if graph_seed is None:
      graph_seed = int(rng.integers(2 ** 63))
    t0 = time.perf_counter()
    complete = self.graph == "complete"
    perm = np.arange(k) if complete else ring_permutation(k, graph_seed)
    offsets, masking = _layout(k, complete, self.degree or 0)
    ph = phase[perm]
    # 1. advertise keys
    keys = [X25519PrivateKey.generate() for _ in range(k)]
    public = [X25519PublicKey.from_public_bytes(key.public_key().public_bytes(*_RAW))
              for key in keys]
    private = [key.private_bytes_raw() for key in keys]
    # 2. share keys: b_u and the private key, t-of-|N(u)| among N(u), for clients that share
    self_seeds = [os.urandom(KEY_BYTES) for _ in range(k)]
    shares = np.zeros((k, len(offsets), 2, shamir.CHUNKS), np.int64)
    owners = np.flatnonzero(ph >= ADVERTISED_ONLY)
    if owners.size:
      secrets = np.frombuffer(b"".join(self_seeds[i] + private[i] for i in owners),
                              np.uint8).reshape(2 * owners.size, KEY_BYTES)
      field = shamir.to_field(secrets).reshape(owners.size, 2 * shamir.CHUNKS)
      points = (owners[:, None] + offsets[None, :]) % k + 1
      shares[owners] = shamir.split(field, self.threshold, points).reshape(
          owners.size, len(offsets), 2, shamir.CHUNKS)
    # 3. masked input: rows of clients that do not upload are zeroed at the end
    masked = inputs[perm].astype(np.uint32, copy=False)
    uploads = ph >= UPLOADED_THEN_DROPPED
    shared = ph >= ADVERTISED_ONLY
    for o, rows in masking:
      i = np.arange(rows)
      j = (i + o) % k
      live = shared[i] & shared[j] & (uploads[i] | uploads[j])
      buf = self._keystreams([_pair(keys[a], public[b]) if ok else None
                              for a, b, ok in zip(i.tolist(), j.tolist(), live.tolist())], rows)
      # the earlier ring position adds +PRG(s_ij), the later one -PRG(s_ij)
      if rows > k - o:
        np.negative(buf[k - o:], out=buf[k - o:])
      masked[:rows] += buf
      if rows == k:
        masked[o:] -= buf[:k - o]
        masked[:o] -= buf[k - o:]
      else:                                  # the half offset of an even complete graph
        masked[o:o + rows] -= buf
    buf = self._keystreams([self_seeds[i] if uploads[i] else None for i in range(k)], k)
    masked += buf
    masked[~uploads] = 0
    return Round(ph, perm, offsets, masking, int(graph_seed), public, private, self_seeds, shares,
                 masked, time.perf_counter() - t0)

  def unmask(self, rnd: Round, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Step 4 (the server's side): the sum of the uploads, masks removed. See `sum`."""
    rng = self._generator(rng)
    t0 = time.perf_counter()
    k, t, ph = rnd.k, self.threshold, rnd.phase
    hood = rnd.neighbourhood()                          # [k, |N|] positions, itself first
    answers = ph == COMPLETED
    uploaded = ph >= UPLOADED_THEN_DROPPED
    need_b, need_key = self._requests(rnd, hood)
    failed = True
    try:
      both = np.intersect1d(need_b, need_key)
      if both.size:      # never: an honest client refuses a request for both of one client's
        raise AssertionError(f"secure aggregation: the server asked for both the self-mask seed "
                             f"and the private key of clients {rnd.perm[both].tolist()}")
      total = rnd.masked.sum(axis=0, dtype=np.uint32)
      owners = np.concatenate([need_b, need_key])
      short = owners[answers[hood[owners]].sum(axis=1) < t]
      if answers.sum() < t:     # (on the complete graph the only way a neighbourhood falls short)
        raise SecAggError(f"secure aggregation: {int(answers.sum())} of {k} clients answered the "
                          f"unmasking, fewer than the threshold {t}; the masks cannot be removed "
                          "and the round has no sum")
      if short.size:
        u = int(short[np.argmin(rnd.perm[short])])      # name the lowest client id
        raise SecAggError(
            f"secure aggregation: {short.size} neighbourhoods have fewer than the threshold {t} "
            f"answering the unmasking (client {int(rnd.perm[u])}'s: "
            f"{int(answers[hood[u]].sum())} of {hood.shape[1]}); the masks cannot be removed and "
            "the round has no sum")
      seeds = self._reconstruct(rnd, need_b, 0, rng)
      keys = self._reconstruct(rnd, need_key, 1, rng)
      failed = False
      # remove every upload's self mask
      total -= self._keystreams(seeds, len(seeds)).sum(axis=0, dtype=np.uint32)
      # remove the pair masks that uploaders added with clients that dropped before uploading
      pairs = []               # (seed, sign the uploader used)
      for i, key in zip(need_key.tolist(), keys):
        private = X25519PrivateKey.from_private_bytes(key)
        for j in hood[i, 1:].tolist():
          if uploaded[j]:
            pairs.append((_pair(private, rnd.public[j]), j < i))
      for start in range(0, len(pairs), max(k, 1)):
        chunk = pairs[start:start + max(k, 1)]
        buf = self._keystreams([s for s, _ in chunk], len(chunk))
        minus = np.asarray([not plus for _, plus in chunk])
        np.negative(buf, out=buf, where=minus[:, None])
        total -= buf.sum(axis=0, dtype=np.uint32)
      return total
    finally:
      self.last_cost = self._cost(rnd, hood, need_b, need_key, failed=failed,
                                  server_seconds=time.perf_counter() - t0)

  @staticmethod
  def _requests(rnd: Round, hood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ring positions whose b_u the server asks for: every upload's; those whose private key it
    asks for: clients that shared keys, did not upload, and have a neighbour that uploaded)."""
    ph = rnd.phase
    masked_with = (ph[hood[:, 1:]] >= UPLOADED_THEN_DROPPED).sum(axis=1)
    return (np.flatnonzero(ph >= UPLOADED_THEN_DROPPED),
            np.flatnonzero((ph == ADVERTISED_ONLY) & (masked_with > 0)))

  def _reconstruct(self, rnd: Round, owners: np.ndarray, kind: int,
                   rng: np.random.Generator) -> list[bytes]:
    """Secret `kind` (0: b_u, 1: private key) of each owner (ring positions) from t shares held by
    answering members of its closed neighbourhood, the t drawn at random by `rng`."""
    rnd.requests[kind] = (rnd.perm[owners], None)
    if not owners.size:
      return []
    t = self.threshold
    hood = rnd.neighbourhood()[owners]
    answers = rnd.phase[hood] == COMPLETED
    order = np.argsort(np.where(answers, rng.random(hood.shape), 2.0), axis=1)[:, :t]
    holders = np.take_along_axis(hood, order, axis=1)
    rnd.requests[kind] = (rnd.perm[owners], rnd.perm[holders])
    held = rnd.shares[owners[:, None], order, kind]                       # [o, t, CHUNKS]
    secrets = shamir.from_field(shamir.combine(held, holders + 1))
    return [row.tobytes() for row in secrets]

  def _cost(self, rnd: Round, hood, need_b, need_key, failed: bool,
            server_seconds: float) -> RoundCost:
    """The deterministic counts of the round (module docstring), in the clients' order."""
    k, L, ph = rnd.k, self.length, rnd.phase
    deg = max(hood.shape[1] - 1, 0)
    nbr = ph[hood[:, 1:]]
    n_shared = (nbr >= ADVERTISED_ONLY).sum(axis=1)          # neighbours that shared keys
    n_uploaded = (nbr >= UPLOADED_THEN_DROPPED).sum(axis=1)
    shares_, upl, done = ph >= ADVERTISED_ONLY, ph >= UPLOADED_THEN_DROPPED, ph == COMPLETED
    up = np.zeros((k, 4), np.int64)
    down = np.zeros((k, 4), np.int64)
    up[:, 0] = PUBLIC_KEYS_BYTES
    down[:, 1] = deg * (ID_BYTES + PUBLIC_KEYS_BYTES)
    up[:, 1] = shares_ * deg * CIPHERTEXT_BYTES
    down[:, 2] = shares_ * n_shared * CIPHERTEXT_BYTES
    up[:, 2] = upl * 4 * L
    down[:, 3] = upl * ID_BYTES * n_uploaded
    up[:, 3] = done * (n_shared + 1) * (ID_BYTES + SHARE_BYTES)
    agreements = shares_ * deg + upl * n_shared
    reconstructed = 0 if failed else len(need_b) + len(need_key)
    server_agreements = 0 if failed else int(n_uploaded[need_key].sum())

    def by_client(a):
      out = np.empty_like(a)
      out[rnd.perm] = a
      return out

    return RoundCost(
        clients=k, length=L, degree=deg, threshold=self.threshold, phase=by_client(ph),
        bytes_up=by_client(up), bytes_down=by_client(down),
        client_keys_generated=np.full(k, 2, np.int64),
        client_key_agreements=by_client(agreements.astype(np.int64)),
        client_prg_elements=by_client((upl * L * (1 + n_shared)).astype(np.int64)),
        client_shares_made=by_client((shares_ * 2 * (deg + 1)).astype(np.int64)),
        server_key_agreements=server_agreements,
        server_prg_elements=0 if failed else L * (len(need_b) + server_agreements),
        server_secrets_reconstructed=reconstructed,
        server_shares_combined=self.threshold * reconstructed,
        client_seconds=rnd.client_seconds, server_seconds=server_seconds)

