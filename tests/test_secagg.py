"""Secure aggregation (federated/secagg.py) and Shamir sharing (federated/shamir.py), each against
an independent reference: the plain ring sum, a hand-written Lagrange interpolation, an
exhaustive small field, brute-force graph counts, scipy's hypergeometric tails and the parameters
published with Google's federated-compute implementation of SecAgg+."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from pdist.federated import secagg, shamir
from pdist.federated.secagg import (ADVERTISED_ONLY, COMPLETED, DROPPED_BEFORE_SHARING,
                                    UPLOADED_THEN_DROPPED, SecAggError, SecureAggregation)

RING = 2 ** 32


def _ring_sum(rows: np.ndarray) -> np.ndarray:
  """The plain sum mod 2^32, computed without relying on uint32 wrap-around."""
  return (rows.astype(np.uint64).sum(axis=0) % RING).astype(np.uint32)


def _inputs(k, length, seed=0):
  return np.random.default_rng(seed).integers(0, RING, size=(k, length), dtype=np.uint32)


def _phases(k, counts, seed):
  """counts {phase: how many}; the rest COMPLETED; shuffled by `seed`."""
  phase = np.full(k, COMPLETED)
  order = np.random.default_rng(seed).permutation(k)
  start = 0
  for code, n in counts.items():
    phase[order[start:start + n]] = code
    start += n
  return phase


# complete: SecAgg, t-of-k; harary: SecAgg+, degree 8, t = 3 of each closed neighbourhood of 9
GRAPHS = {"complete": dict(k=25, threshold=13), "harary": dict(k=40, threshold=3, degree=8)}
PATTERNS = {
    "all_completed": {},
    "dropped_before_upload": {ADVERTISED_ONLY: 0.15},
    "uploaded_then_dropped": {UPLOADED_THEN_DROPPED: 0.2},
    "dropped_before_sharing": {DROPPED_BEFORE_SHARING: 0.15},
    "mixed": {DROPPED_BEFORE_SHARING: 0.05, ADVERTISED_ONLY: 0.15, UPLOADED_THEN_DROPPED: 0.15},
}


def _protocol(graph, length=97, **kw):
  g = dict(GRAPHS[graph])
  k = g.pop("k")
  if graph == "harary":
    return k, SecureAggregation(length, k, g["threshold"], graph="harary", degree=g["degree"], **kw)
  return k, SecureAggregation(length, k, g["threshold"], **kw)


def _pattern(k, name, seed=5):
  return _phases(k, {code: int(round(f * k)) for code, f in PATTERNS[name].items()}, seed)


# -- the sum ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_sum_is_the_plain_ring_sum_of_the_uploads_bit_for_bit(graph, pattern):
  k, sa = _protocol(graph)
  x = _inputs(k, sa.length)          # rows of clients that never upload hold garbage
  phase = _pattern(k, pattern)
  total = sa.sum(x, phase, np.random.default_rng(1), graph_seed=7)
  uploaded = phase >= UPLOADED_THEN_DROPPED
  assert np.array_equal(total, _ring_sum(x[uploaded]))
  # the reference could tell: including the non-uploads, or dropping the late drops, differs
  if (~uploaded).any():
    assert not np.array_equal(total, _ring_sum(x))
  if (phase == UPLOADED_THEN_DROPPED).any():
    assert not np.array_equal(total, _ring_sum(x[phase == COMPLETED]))
  cost = sa.last_cost
  assert np.array_equal(cost.phase, phase)
  assert cost.server_secrets_reconstructed >= uploaded.sum()
  if (phase == ADVERTISED_ONLY).any():     # their pair masks had to be recomputed from their keys
    assert cost.server_key_agreements > 0


def test_fixed_point_sum_decodes_to_the_float_sum():
  k, length = 30, 257
  sa = SecureAggregation(length, k, threshold=16, fraction_bits=16)
  x = np.random.default_rng(1).normal(size=(k, length))
  encoded, clipped = sa.encode(x)
  assert clipped == 0
  phase = _phases(k, {ADVERTISED_ONLY: 5, UPLOADED_THEN_DROPPED: 4}, seed=2)
  total = sa.sum(encoded, phase, 0)
  uploaded = phase >= UPLOADED_THEN_DROPPED
  assert np.array_equal(total, _ring_sum(encoded[uploaded]))
  assert np.abs(sa.decode(total) - x[uploaded].sum(axis=0)).max() <= k / 2 ** 16


def test_the_old_survived_bool_array_still_works():
  """True -> COMPLETED, False -> the upload never arrived (ADVERTISED_ONLY)."""
  k, sa = _protocol("complete")
  x = _inputs(k, sa.length, seed=3)
  survived = np.arange(k) % 4 != 0
  assert np.array_equal(sa.sum(x, survived), _ring_sum(x[survived]))
  assert np.array_equal(sa.last_cost.phase, np.where(survived, COMPLETED, ADVERTISED_ONLY))


def test_saturated_uploads_are_clipped_never_wrapped():
  k = 10
  sa = SecureAggregation(4, k, threshold=6, fraction_bits=24)
  encoded, clipped = sa.encode(np.full((k, 4), 1e9))
  assert clipped == k * 4
  total = sa.sum(encoded, np.full(k, COMPLETED))
  assert np.all(sa.decode(total) > 0)             # k saturated values still sum to a positive
  assert np.allclose(sa.decode(total), k * sa.bound)


# -- the server's view -----------------------------------------------------------------------------
def _uniform(values: np.ndarray) -> None:
  """Bytes uniform (chi-square) and each of the 32 bits balanced over the coordinates."""
  assert stats.chisquare(np.bincount(values.view(np.uint8), minlength=256)).pvalue > 1e-4
  ones = ((values[:, None] >> np.arange(32, dtype=np.uint32)) & 1).sum(axis=0)
  assert np.abs(ones - len(values) / 2).max() < 5 * math.sqrt(len(values) / 4)


def test_a_masked_upload_is_uniform_whatever_the_input():
  k, length = 12, 4096
  sa = SecureAggregation(length, k, threshold=7)
  x = _inputs(k, length)
  x[0] = 0
  x[1] = np.arange(length)
  rnd = sa.clients_round(x, np.full(k, COMPLETED), 0)
  uploads = rnd.uploads()
  for u in (0, 1):
    _uniform(uploads[u])
    assert np.count_nonzero(uploads[u] == x[u]) <= 2
    # even with its self mask removed (the server learns b_u of every upload) the pair masks
    # still hide x_u
    unself = uploads[u] - secagg.prg(rnd.self_seeds[rnd.position[u]], length)
    _uniform(unself)
    assert np.count_nonzero(unself == x[u]) <= 2
  assert np.array_equal(sa.unmask(rnd, 0), _ring_sum(x))


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_masks_cancel_only_in_the_full_sum(graph):
  """Remove every self mask (as the server may): the uploads of all clients sum to the plain sum,
  but those of any subset that omits one client do not: its pair masks are left in."""
  k, sa = _protocol(graph, length=2048)
  x = _inputs(k, sa.length, seed=4)
  rnd = sa.clients_round(x, np.full(k, COMPLETED), 0, graph_seed=3)
  uploads = rnd.uploads()
  pos = rnd.position
  unself = {u: y - secagg.prg(rnd.self_seeds[pos[u]], sa.length) for u, y in uploads.items()}
  everyone = np.asarray(list(unself.values()))
  assert np.array_equal(_ring_sum(everyone), _ring_sum(x))
  for w in (0, k // 2, k - 1):
    rest = [u for u in range(k) if u != w]
    partial = _ring_sum(np.asarray([unself[u] for u in rest]))
    plain = _ring_sum(x[rest])
    assert np.count_nonzero(partial == plain) <= 2
    _uniform(partial - plain)
    raw = _ring_sum(np.asarray([uploads[u] for u in rest]))
    assert np.count_nonzero(raw == plain) <= 2


# -- unmasking -------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph", list(GRAPHS))
def test_any_t_answers_give_the_same_sum(graph):
  k, sa = _protocol(graph)
  x = _inputs(k, sa.length, seed=6)
  phase = _pattern(k, "mixed", seed=8)
  rnd = sa.clients_round(x, phase, 0, graph_seed=11)
  reference = _ring_sum(x[phase >= UPLOADED_THEN_DROPPED])
  used = []
  for seed in (1, 2, 3):
    assert np.array_equal(sa.unmask(rnd, np.random.default_rng(seed)), reference)
    owners, holders = rnd.requests[0]
    hood = {int(rnd.perm[i]): set(rnd.perm[row].tolist()) for i, row in
            enumerate(rnd.neighbourhood())}
    for owner, row in zip(owners.tolist(), holders):
      assert len(set(row.tolist())) == sa.threshold                       # t distinct
      assert set(row.tolist()) <= hood[owner]                             # its neighbours
      assert (phase[row] == COMPLETED).all()                              # that answered
    used.append(holders.copy())
  assert not np.array_equal(used[0], used[1])        # different answers were used
  again = sa.unmask(rnd, np.random.default_rng(1))   # the same Generator seed: the same choice
  assert np.array_equal(again, reference) and np.array_equal(rnd.requests[0][1], used[0])


def test_fewer_than_t_answers_is_an_error_not_a_wrong_sum():
  sa = SecureAggregation(8, 10, threshold=6)
  x = _inputs(10, 8)
  phase = np.where(np.arange(10) < 5, COMPLETED, UPLOADED_THEN_DROPPED)
  with pytest.raises(SecAggError, match="5 of 10 clients answered the unmasking, fewer than the "
                                        "threshold 6") as e:
    sa.sum(x, phase)
  assert len(str(e.value).splitlines()) == 1
  assert sa.last_cost.server_secrets_reconstructed == 0     # the bytes were spent all the same
  assert sa.last_cost.bytes_up[:, 3].sum() > 0
  phase[5] = COMPLETED                                      # exactly t: enough
  assert np.array_equal(sa.sum(x, phase), _ring_sum(x))
  with pytest.raises(SecAggError, match="0 of 0 clients"):  # an empty round has no sum either
    sa.sum(np.zeros((0, 8), np.uint32), np.zeros(0, int))


def test_secagg_plus_needs_t_answers_in_every_needed_neighbourhood():
  k, d, t, seed = 40, 8, 3, 5
  sa = SecureAggregation(16, k, t, graph="harary", degree=d)
  graph = secagg.harary_graph(k, d, seed)
  x = _inputs(k, 16)
  # client 0 uploaded but only 2 of its closed neighbourhood answer: its b_u cannot be rebuilt
  phase = np.full(k, COMPLETED)
  phase[graph[0]] = UPLOADED_THEN_DROPPED
  phase[graph[0][:1]] = COMPLETED
  phase[0] = COMPLETED
  with pytest.raises(SecAggError, match=r"neighbourhoods have fewer than the threshold 3 .*"
                                        r"client 0's: 2 of 9") as e:
    sa.sum(x, phase, graph_seed=seed)
  assert len(str(e.value).splitlines()) == 1
  # a short neighbourhood whose owner's secrets are not needed does not stop the round: client
  # 0 sent no shares, and of its 8 neighbours (ring positions -4..4 around it) only those at +-1
  # answer, which leaves every other neighbourhood at least 3 answers
  perm = secagg.ring_permutation(k, seed)
  at = lambda offset: perm[(np.argsort(perm)[0] + offset) % k]    # noqa: E731
  phase = np.full(k, COMPLETED)
  phase[[at(o) for o in (-4, -3, -2, 2, 3, 4)]] = UPLOADED_THEN_DROPPED
  phase[0] = DROPPED_BEFORE_SHARING
  rnd = sa.clients_round(x, phase, 0, graph_seed=seed)
  assert (rnd.phase[rnd.neighbourhood()[rnd.position[0]]] == COMPLETED).sum() == 2
  assert np.array_equal(sa.unmask(rnd, 0), _ring_sum(x[phase >= UPLOADED_THEN_DROPPED]))
  assert 0 not in rnd.requests[0][0] and 0 not in rnd.requests[1][0]


def test_never_both_secrets_of_one_client(monkeypatch):
  asked = []
  original = SecureAggregation._reconstruct

  def spy(self, rnd, owners, kind, rng):
    asked.append((kind, set(rnd.perm[owners].tolist()), rnd))
    return original(self, rnd, owners, kind, rng)

  monkeypatch.setattr(SecureAggregation, "_reconstruct", spy)
  for graph in GRAPHS:
    for pattern in ("mixed", "dropped_before_upload", "uploaded_then_dropped"):
      asked.clear()
      k, sa = _protocol(graph)
      phase = _pattern(k, pattern, seed=12)
      sa.sum(_inputs(k, sa.length), phase, 0, graph_seed=2)
      (kind_b, b, rnd), (kind_key, keys, _) = asked
      assert (kind_b, kind_key) == (0, 1)
      assert not b & keys
      assert b == set(np.flatnonzero(phase >= UPLOADED_THEN_DROPPED).tolist())
      hood = rnd.neighbourhood()
      masked_with_upload = {int(rnd.perm[i]) for i in range(k)
                            if (rnd.phase[hood[i, 1:]] >= UPLOADED_THEN_DROPPED).any()}
      assert keys == set(np.flatnonzero(phase == ADVERTISED_ONLY).tolist()) & masked_with_upload
  # a client that shared keys but that no uploader masked with: its key is not requested
  asked.clear()
  k, sa = _protocol("harary")
  perm = secagg.ring_permutation(k, 2)
  lonely = int(perm[10])
  phase = np.full(k, COMPLETED)
  phase[perm[6:15]] = DROPPED_BEFORE_SHARING           # its 8 neighbours sent no shares
  phase[lonely] = ADVERTISED_ONLY
  phase[perm[20]] = ADVERTISED_ONLY                    # one that uploaders did mask with
  sa.sum(_inputs(k, sa.length), phase, 0, graph_seed=2)
  assert asked[1][1] == {int(perm[20])}
  # a server that asks for both is stopped before anything is reconstructed
  monkeypatch.setattr(SecureAggregation, "_requests", staticmethod(
      lambda rnd, hood: (np.arange(rnd.k), np.arange(1))))
  asked.clear()
  k, sa = _protocol("complete")
  with pytest.raises(AssertionError, match="asked for both"):
    sa.sum(_inputs(k, sa.length), np.full(k, COMPLETED), 0)
  assert not asked


# -- Shamir ----------------------------------------------------------------------------------------
def _lagrange_reference(xs, ys, at, p=shamir.P):
  """The interpolating polynomial through (xs, ys), evaluated at `at`, in plain Python."""
  total = 0
  for j, (xj, yj) in enumerate(zip(xs, ys)):
    num = den = 1
    for m, xm in enumerate(xs):
      if m != j:
        num = num * (at - xm) % p
        den = den * (xj - xm) % p
    total = (total + yj * num * pow(den, -1, p)) % p
  return total


def test_shamir_any_t_shares_reconstruct_against_a_reference_lagrange():
  rng = np.random.default_rng(0)
  secrets = rng.integers(0, shamir.P, size=(3, 5))
  points = np.asarray([3, 17, 5, 2 ** 30, 99, 1, 12345])
  t = 4
  shares = shamir.split(secrets, t, points)                     # [owners, points, secrets]
  for pick in itertools.combinations(range(len(points)), t):
    pick = list(pick)
    got = shamir.combine(shares[:, pick], points[pick])
    assert np.array_equal(got, secrets)
    for o in range(3):                                          # the hand-written reference
      assert _lagrange_reference(points[pick].tolist(), shares[o, pick, 0].tolist(), 0) == \
          secrets[o, 0]
    weights = shamir.lagrange_at_zero(points[pick])
    for j, w in enumerate(weights):
      ys = [int(j == m) for m in range(t)]
      assert _lagrange_reference(points[pick].tolist(), ys, 0) == w
  # each owner its own points (SecAgg+: its neighbours)
  own = np.asarray([[4, 9, 2, 7, 11], [1, 3, 8, 6, 10], [12, 5, 13, 14, 15]])
  shares = shamir.split(secrets, t, own)
  pick = [[0, 2, 3, 4], [4, 3, 1, 0], [1, 2, 3, 4]]
  held = np.take_along_axis(shares, np.asarray(pick)[:, :, None], axis=1)
  assert np.array_equal(shamir.combine(held, np.take_along_axis(own, np.asarray(pick), 1)),
                        secrets)
  with pytest.raises(ValueError, match="distinct and non-zero"):
    shamir.lagrange_at_zero(np.asarray([1, 2, 2]))


def test_shamir_t_minus_1_shares_fit_every_secret():
  """t - 1 shares are consistent with any candidate secret: through them and (0, candidate)
  passes a polynomial of degree t - 1 (reference Lagrange), so they cannot tell which secret it
  was; the t-th share does."""
  t, points = 4, [2, 7, 11, 20]
  secret = np.asarray([[123456789]])
  shares = shamir.split(secret, t, np.asarray(points))[0, :, 0].tolist()
  xs, ys = points[:t - 1], shares[:t - 1]
  candidates = [int(secret[0, 0]), 0, 1, shamir.P - 1, 987654321]
  predicted_last = set()
  for c in candidates:
    # the polynomial through (0, c) and the t - 1 shares: degree <= t - 1 (t points) ...
    poly_x, poly_y = [0] + xs, [c] + ys
    assert [_lagrange_reference(poly_x, poly_y, x) for x in xs] == ys   # ... matches the shares
    assert _lagrange_reference(poly_x, poly_y, 0) == c                  # ... and has f(0) = c
    predicted_last.add(_lagrange_reference(poly_x, poly_y, points[-1]))
  assert len(predicted_last) == len(candidates)          # the t-th share tells them apart
  assert _lagrange_reference(points, shares, 0) == secret[0, 0]


def test_shamir_t_minus_1_shares_are_uniform_whatever_the_secret_small_field():
  """Exhaustively in GF(13), t = 3: over all polynomials (the coefficients split draws uniformly)
  the pair of shares at two points takes every value exactly once, for every secret: the shares'
  distribution does not depend on the secret."""
  p, t, points = 13, 3, np.asarray([1, 5])
  coeffs = np.asarray(list(itertools.product(range(p), repeat=t - 1))).T   # [t - 1, p^2]
  for s in range(p):
    secrets = np.full((p * p, 1), s)
    shares = shamir.split(secrets, t, points, p=p, coeffs=coeffs[:, :, None])[:, :, 0]
    pairs = shares[:, 0] * p + shares[:, 1]
    assert np.array_equal(np.sort(pairs), np.arange(p * p))
    # and all t shares pin the secret: add a third point
    third = shamir.split(secrets, t, np.asarray([1, 5, 9]), p=p, coeffs=coeffs[:, :, None])
    assert np.array_equal(shamir.combine(third, np.asarray([1, 5, 9]), p=p)[:, 0], secrets[:, 0])


def test_shamir_polynomials_are_fresh_for_every_chunk_and_owner():
  """Shares of the zero secret below the threshold are uniform, and no two chunks or owners
  share a polynomial (else the differences of their shares would give away those of the
  secrets)."""
  zeros = np.zeros((2000, shamir.CHUNKS), np.int64)
  shares = shamir.split(zeros, 3, np.asarray([1, 2]))          # t - 1 = 2 shares each
  # f(1) = c1 + c2: distinct but for chance collisions of uniform values in GF(2^31 - 1) (18,000
  # values: 0.075 expected, more than 3 with probability ~1e-6); a polynomial shared by chunks or
  # owners would repeat values thousands of times
  assert shares[:, 0].size - len(np.unique(shares[:, 0])) <= 3
  assert stats.chisquare(np.bincount(shares.ravel() % 256, minlength=256)).pvalue > 1e-4
  secret = np.asarray([[5, 9]])
  for _ in range(20):                                          # chunk differences stay hidden
    one = shamir.split(secret, 2, np.asarray([7]))[0, 0]
    assert (one[0] - one[1]) % shamir.P != (5 - 9) % shamir.P


def test_secrets_round_trip_through_the_field():
  raw = np.frombuffer(bytes(range(64)), np.uint8).reshape(2, 32)
  field = shamir.to_field(raw)
  assert field.shape == (2, shamir.CHUNKS) and field.max() < 2 ** shamir.CHUNK_BITS
  assert np.array_equal(shamir.from_field(field), raw)
  bad = field.copy()
  bad[0, 0] = 2 ** 30                         # not a 30-bit chunk: shares that do not belong
  with pytest.raises(ValueError, match="do not belong together"):
    shamir.from_field(bad)
  bad = field.copy()
  bad[1, -1] = 2 ** 20                        # bits past the secret's 256
  with pytest.raises(ValueError, match="do not belong together"):
    shamir.from_field(bad)


# -- SecAgg+'s graph and parameters ----------------------------------------------------------------
def _connected(nodes, adjacency) -> bool:
  nodes = set(nodes)
  seen, todo = set(), [next(iter(nodes))]
  while todo:
    u = todo.pop()
    if u not in seen:
      seen.add(u)
      todo.extend(v for v in adjacency[u] if v in nodes)
  return seen == nodes


def test_harary_graph_is_regular_symmetric_and_seeded():
  n, d = 30, 6
  graph = secagg.harary_graph(n, d, seed=1)
  assert graph.shape == (n, d)
  adjacency = [set(row.tolist()) for row in graph]
  for u, nbrs in enumerate(adjacency):
    assert len(nbrs) == d and u not in nbrs                        # d-regular, no self loops
    assert all(u in adjacency[v] for v in nbrs)                    # symmetric
  # it is H(d, n) relabelled: on the ring of the permutation, neighbours are +-1..+-d/2 away
  perm = secagg.ring_permutation(n, 1)
  pos = np.argsort(perm)
  for u, nbrs in enumerate(adjacency):
    assert {(pos[v] - pos[u]) % n for v in nbrs} == {o % n for o in range(-d // 2, d // 2 + 1)
                                                     if o}
  # d-connected, like every Harary graph: removing d - 1 clients never disconnects it
  rng = np.random.default_rng(0)
  for _ in range(30):
    gone = set(rng.choice(n, d - 1, replace=False).tolist())
    assert _connected(set(range(n)) - gone, adjacency)
  # the seed, shared by server and clients, fixes the permutation
  assert np.array_equal(secagg.harary_graph(n, d, seed=1), graph)
  assert not np.array_equal(secagg.ring_permutation(n, 2), perm)
  assert not np.array_equal(secagg.harary_graph(n, d, seed=2), graph)
  with pytest.raises(ValueError, match="even degree"):
    secagg.harary_graph(n, 5, seed=1)


def test_secagg_plus_masks_and_shares_only_along_the_seeded_graph(monkeypatch):
  k, d, seed = 40, 8, 9
  sa = SecureAggregation(32, k, 3, graph="harary", degree=d)
  agreed = []
  original = secagg._pair
  monkeypatch.setattr(secagg, "_pair", lambda private, public: agreed.append(
      (private.private_bytes_raw(), public)) or original(private, public))
  rnd = sa.clients_round(_inputs(k, 32), np.full(k, COMPLETED), 0, graph_seed=seed)
  adjacency = [set(row.tolist()) for row in secagg.harary_graph(k, d, seed)]
  hood = rnd.neighbourhood()
  for i in range(k):                      # the round's neighbourhoods are the seeded graph's
    u = int(rnd.perm[i])
    assert hood[i, 0] == i and set(rnd.perm[hood[i, 1:]].tolist()) == adjacency[u]
  owner_of_private = {key: int(rnd.perm[i]) for i, key in enumerate(rnd.private)}
  owner_of_public = {id(key): int(rnd.perm[i]) for i, key in enumerate(rnd.public)}
  pairs = {frozenset((owner_of_private[a], owner_of_public[id(b)])) for a, b in agreed}
  assert len(agreed) == len(pairs) == k * d // 2                 # each edge once ...
  assert all(len(p) == 2 and max(p) in adjacency[min(p)] for p in pairs)   # ... only edges


@pytest.mark.parametrize("n, gamma, delta, degree, threshold", [
    # federated-compute's graph_parameter_finder_test.cc (semi-honest, sigma 40, eta 20)
    (10, 0.33, 0.33, 8, 4), (100, 0.33, 0.33, 68, 34), (100, 0.05, 0.33, 28, 6),
    (1000, 0.05, 0.33, 72, 24), (1000, 0.33, 0.05, 78, 60), (10000, 0.05, 0.33, 86, 29)])
def test_harary_parameters_match_the_reference_implementation(n, gamma, delta, degree, threshold):
  d, t = secagg.harary_parameters(n, gamma, delta)
  assert d == degree and t <= threshold
  # and the conditions hold, checked with scipy's hypergeometric distribution
  corrupt, surviving = math.floor(gamma * n + 1e-9), math.ceil((1 - delta) * n - 1e-9)
  assert n * stats.hypergeom(n, corrupt, d).sf(t - 1) < 2.0 ** -40       # < t corrupt neighbours
  assert n * stats.hypergeom(n, surviving, d).cdf(t - 1) < 2.0 ** -20    # >= t surviving ones


def test_secagg_plus_constructor_picks_its_parameters():
  sa = SecureAggregation.secagg_plus(8, 1000, gamma=0.05, delta=0.05)
  assert (sa.graph, sa.degree, sa.threshold) == ("harary", 30, 17)
  with pytest.raises(ValueError, match="even degree"):
    SecureAggregation(8, 100, 3, graph="harary", degree=7)
  with pytest.raises(ValueError, match="degree \\+ 1"):
    SecureAggregation(8, 100, 10, graph="harary", degree=8)


# -- cost ------------------------------------------------------------------------------------------
def test_cost_counts_are_exact_and_match_the_operations_run(monkeypatch):
  k, d, t, L, seed = 40, 8, 3, 64, 4
  sa = SecureAggregation(L, k, t, graph="harary", degree=d)
  phase = _pattern(k, "mixed", seed=3)
  calls = {"pairs": 0, "keystreams": 0}
  pair, keystreams = secagg._pair, SecureAggregation._keystreams

  def count_pair(*a):
    calls["pairs"] += 1
    return pair(*a)

  def count_keystreams(self, seeds, rows):
    calls["keystreams"] += sum(s is not None for s in seeds)
    return keystreams(self, seeds, rows)

  monkeypatch.setattr(secagg, "_pair", count_pair)
  monkeypatch.setattr(SecureAggregation, "_keystreams", count_keystreams)
  rnd = sa.clients_round(_inputs(k, L), phase, 0, graph_seed=seed)
  client_calls = dict(calls)
  sa.unmask(rnd, 0)
  server_pairs = calls["pairs"] - client_calls["pairs"]
  server_streams = calls["keystreams"] - client_calls["keystreams"]
  cost = sa.last_cost

  # brute force from the seeded graph's adjacency
  adjacency = [set(row.tolist()) for row in secagg.harary_graph(k, d, seed)]
  shared = lambda v: phase[v] >= ADVERTISED_ONLY          # noqa: E731
  uploaded = lambda v: phase[v] >= UPLOADED_THEN_DROPPED  # noqa: E731
  edges = [(u, v) for u in range(k) for v in adjacency[u] if u < v]
  live = [(u, v) for u, v in edges if shared(u) and shared(v) and (uploaded(u) or uploaded(v))]
  assert client_calls["pairs"] == len(live)               # each pair's seed computed once here
  assert client_calls["keystreams"] == len(live) + sum(map(uploaded, range(k)))
  for u in range(k):
    n_shared = sum(map(shared, adjacency[u]))
    n_up = sum(map(uploaded, adjacency[u]))
    assert cost.client_key_agreements[u] == shared(u) * d + uploaded(u) * n_shared
    assert cost.client_prg_elements[u] == uploaded(u) * L * (1 + n_shared)
    assert cost.client_shares_made[u] == shared(u) * 2 * (d + 1)
    assert list(cost.bytes_up[u]) == [
        2 * 32, shared(u) * d * secagg.CIPHERTEXT_BYTES, uploaded(u) * 4 * L,
        (phase[u] == COMPLETED) * (n_shared + 1) * (4 + secagg.SHARE_BYTES)]
    assert list(cost.bytes_down[u]) == [
        0, d * (4 + 64), shared(u) * n_shared * secagg.CIPHERTEXT_BYTES, uploaded(u) * 4 * n_up]
  # both ends of a pair agree in the deployed protocol, once in the simulation
  both_up = sum(uploaded(u) and uploaded(v) for u, v in live)
  mask_agreements = cost.client_key_agreements.sum() - d * sum(map(shared, range(k)))
  assert mask_agreements == len(live) + both_up
  dropped = [u for u in range(k) if phase[u] == ADVERTISED_ONLY
             and any(uploaded(v) for v in adjacency[u])]
  assert cost.server_key_agreements == server_pairs == sum(
      sum(map(uploaded, adjacency[u])) for u in dropped)
  assert cost.server_prg_elements == L * server_streams == L * (
      sum(map(uploaded, range(k))) + cost.server_key_agreements)
  assert cost.server_secrets_reconstructed == sum(map(uploaded, range(k))) + len(dropped)
  assert cost.server_shares_combined == t * cost.server_secrets_reconstructed
  # deterministic: fresh keys, the same counts
  sa.sum(_inputs(k, L, seed=9), phase, 5, graph_seed=seed)
  again = sa.last_cost
  for field in ("bytes_up", "bytes_down", "client_key_agreements", "client_prg_elements",
                "client_shares_made"):
    assert np.array_equal(getattr(again, field), getattr(cost, field))
  assert again.server_prg_elements == cost.server_prg_elements


def test_harary_threshold_is_reachable_by_the_survivors_when_few_clients_are_corrupt():
  """With gamma n < 1 the corrupt-neighbour bound allows t = 1, but t must still be reached by
  the surviving neighbours with probability 1 - 2^-20 per client (union over n): scipy's
  hypergeometric tail, independently of the code's own computation."""
  from scipy import stats
  n, gamma, delta = 50, 0.01, 0.1
  d, t = secagg.harary_parameters(n, gamma, delta)
  surviving = math.ceil((1 - delta) * n)
  # Bell et al.'s correctness condition as the code states it: P[surviving neighbours < t] < q
  assert n * stats.hypergeom(n, surviving, d).cdf(t - 1) < 2 ** -20, (d, t)
