"""Shamir's t-of-n secret sharing over the prime field GF(2^31 - 1), vectorised with numpy.

Secure aggregation (secagg.py) shares two 32-byte secrets per client per round (its self-mask
seed b_u and its mask private key) with its neighbourhood (all the round's clients for SecAgg,
O(log n) of them for SecAgg+), and reconstructs one of the two for some clients. A 32-byte secret
is cut into `CHUNKS` = 9 field elements of 30 bits (`to_field`); every chunk gets its own random
polynomial. All of a round's sharings are one Horner evaluation over an [owners, holders, chunks]
array (each owner with its own holders' points), and all reconstructions one Lagrange
combination with per-owner weights (`lagrange_at_zero` is vectorised too, modular inverses by
square-and-multiply). Every product of two field elements is below 2^62 (of a sum of two and an
element below 2^63), so int64 arithmetic is exact. The functions take the field's prime `p`
(default P) so the tests can enumerate a small field exhaustively.

Security: for any t - 1 distinct non-zero points, the map from a polynomial's t - 1 random
coefficients to its values at those points is a bijection (a Vandermonde system), so t - 1 shares
are uniformly distributed whatever the secret: they carry no information about it. The
coefficients come from the OS's CSPRNG.
"""

from __future__ import annotations

import os

import numpy as np

P = 2 ** 31 - 1            # a Mersenne prime; the field is the integers mod P
CHUNK_BITS = 30            # a secret's bits are cut into 30-bit pieces, each < P
SECRET_BYTES = 32
CHUNKS = -(-8 * SECRET_BYTES // CHUNK_BITS)   # 9 field elements per 32-byte secret


def _uniform(shape, p: int = P) -> np.ndarray:
  """Uniform field elements from the OS's CSPRNG (64 random bits mod p: bias below 2^-32)."""
  count = int(np.prod(shape))
  raw = np.frombuffer(os.urandom(8 * count), np.uint64)
  return (raw % np.uint64(p)).astype(np.int64).reshape(shape)


def to_field(secrets: np.ndarray) -> np.ndarray:
  """[s, bytes] uint8 -> [s, ceil(8 bytes / 30)] field elements of 30 bits (little-endian)."""
  secrets = np.asarray(secrets, np.uint8)
  s, nbytes = secrets.shape
  chunks = -(-8 * nbytes // CHUNK_BITS)
  bits = np.zeros((s, chunks * CHUNK_BITS), np.int64)
  bits[:, :8 * nbytes] = np.unpackbits(secrets, axis=1, bitorder="little")
  weights = np.int64(1) << np.arange(CHUNK_BITS, dtype=np.int64)
  return bits.reshape(s, chunks, CHUNK_BITS) @ weights


def from_field(elements: np.ndarray, nbytes: int = SECRET_BYTES) -> np.ndarray:
  """The inverse of `to_field`: [s, chunks] -> [s, nbytes] uint8. Raises if an element is not a
  30-bit value or sets bits past the secret's end (the shares did not belong together)."""
  elements = np.asarray(elements, np.int64)
  if elements.size and (elements.min() < 0 or elements.max() >= 2 ** CHUNK_BITS):
    raise ValueError("reconstruction gave values outside the secret's range: the shares do not "
                     "belong together")
  s, chunks = elements.shape
  bits = ((elements[..., None] >> np.arange(CHUNK_BITS, dtype=np.int64)) & 1).reshape(s, -1)
  if bits[:, 8 * nbytes:].any():
    raise ValueError("reconstruction gave values outside the secret's range: the shares do not "
                     "belong together")
  return np.packbits(bits[:, :8 * nbytes].astype(np.uint8), axis=1, bitorder="little")


def split(secrets: np.ndarray, t: int, points: np.ndarray, p: int = P,
          coeffs: np.ndarray | None = None) -> np.ndarray:
  """Shares of each owner's secrets at that owner's points.

  secrets [o, c] field elements (c independent secrets, or chunks, per owner); points [n] (the
  same holders for every owner) or [o, n] (each owner its own holders) -> shares [o, n, c] with
  shares[u, j, i] = f_{u,i}(points[u, j]) for random polynomials f_{u,i} of degree t - 1 and
  f_{u,i}(0) = secrets[u, i]. `coeffs` [t - 1, o, c] (the x^1 .. x^{t-1} coefficients) replaces
  the random ones (tests only).
  """
  if not 2 <= p < 2 ** 31:
    raise ValueError(f"the field's prime must be below 2^31 (int64 products), got {p}")
  secrets = np.asarray(secrets, np.int64)
  o, c = secrets.shape
  points = np.broadcast_to(np.asarray(points, np.int64) % p, (o, np.shape(points)[-1]))
  if coeffs is None:
    coeffs = _uniform((t - 1, o, c), p)
  x = points[:, :, None]
  acc = np.zeros((o, points.shape[1], c), np.int64)
  for coef in coeffs[::-1]:          # Horner: ((c_{t-1} x + c_{t-2}) x + ...) x + secret
    acc += coef[:, None, :]          # < 2p, and 2p * p < 2^63: one reduction per step
    acc *= x
    acc %= p
  acc += secrets[:, None, :]
  acc %= p
  return acc


def _inverse(x: np.ndarray, p: int = P) -> np.ndarray:
  """x^(p - 2) mod p elementwise (Fermat): the inverse of every non-zero x."""
  result = np.ones_like(x)
  base = x % p
  e = p - 2
  while e:
    if e & 1:
      result = result * base % p
    base = base * base % p
    e >>= 1
  return result


def lagrange_at_zero(points: np.ndarray, p: int = P) -> np.ndarray:
  """Weights l_j with f(0) = sum_j l_j f(points[..., j]) for any f of degree < the number of
  points: points [..., t] -> weights [..., t] (each row its own point set)."""
  pts = np.asarray(points, np.int64) % p
  t = pts.shape[-1]
  srt = np.sort(pts, axis=-1)
  if (srt[..., 0] == 0).any() or (np.diff(srt, axis=-1) == 0).any():
    raise ValueError("Shamir points must be distinct and non-zero")
  num = np.ones_like(pts)                            # prod_{m != j} x_m
  den = np.ones_like(pts)                            # prod_{m != j} (x_m - x_j)
  for m in range(t):
    xm = pts[..., m:m + 1]
    others = np.arange(t) != m
    num = np.where(others, num * xm % p, num)
    den = np.where(others, den * ((xm - pts) % p) % p, den)
  return num * _inverse(den, p) % p


def combine(shares: np.ndarray, points: np.ndarray, p: int = P) -> np.ndarray:
  """Secrets from t shares each: shares [o, t, c] taken at points [t] or [o, t] -> [o, c]."""
  shares = np.asarray(shares, np.int64)
  o, t, _ = shares.shape
  weights = lagrange_at_zero(np.broadcast_to(np.asarray(points, np.int64), (o, t)), p)
  return (shares * weights[:, :, None] % p).sum(axis=1) % p
