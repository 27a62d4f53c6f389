"""PowerSGD: rank-r approximation by one warm-started power iteration (Vogels et al. 2019).

A gradient leaf is viewed as a matrix M (n x m: all axes but the last, by the last). With Q the
previous step's right factor (m x r, warm start; random at first):

  P = orthonormalise(M Q);   Q = M^T P;   c = P Q^T

Biased; used with error feedback as in the paper. Leaves that are vectors, or whose rank r is not
below min(n, m), are sent uncompressed (then c = g exactly). Payload: P and Q, (n + m) r float32.

.. note:: PowerSGD all-reduces P and then Q, so that all workers share one subspace. Here each
   device or worker compresses its own gradient with its own Q (the compression is emulated per
   sender, and the bytes are what each sender would send); the shared-subspace all-reduce is not
   emulated.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pdist.compression.base import FLOAT_BYTES, Compressor, dense_bytes


def as_matrix(shape) -> tuple[int, int] | None:
  if len(shape) < 2:
    return None
  n, m = int(np.prod(shape[:-1], dtype=np.int64)), int(shape[-1])
  return n, m


def make(config):
  rank = int(config.compression.rank)

  def compressed(shape) -> bool:
    nm = as_matrix(shape)
    return nm is not None and rank < min(nm)

  def init(leaf):
    if not compressed(np.shape(leaf)):
      return ()
    _, m = as_matrix(np.shape(leaf))
    # the warm start's first Q: a fixed random draw (seeded by the shape, the same on every sender)
    q = np.random.default_rng([m, rank, 0x5D]).standard_normal((m, rank)).astype(np.float32)
    return jnp.asarray(q)

  def compress(g, q, key):
    del key
    if not compressed(g.shape):
      return g, q
    n, m = as_matrix(g.shape)
    mat = g.reshape(n, m)
    p, _ = jnp.linalg.qr(mat @ q)
    q = mat.T @ p
    return (p @ q.T).reshape(g.shape), q

  def wire_bytes(shape) -> int:
    if not compressed(shape):
      return dense_bytes(shape)
    n, m = as_matrix(shape)
    return (n + m) * rank * FLOAT_BYTES

  return Compressor("powersgd", init, compress, wire_bytes)
