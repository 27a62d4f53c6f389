"""Gradient buckets: the all-reduce of a pytree as a few large collectives, not one per leaf.

Across processes every all-reduce is a round of messages (gloo over TCP on CPU hosts) with a fixed
cost of ~1-2 ms on loopback whatever its size, so a gradient of many leaves pays it once per leaf:
the 784-512-512-10 MLP's six leaves plus its metrics made seven per update, and 2 processes on
this 2-core machine ran at 53 steps/s against 77 with the default buckets (benchmarks/README.md,
sync_processes.py).
As in PyTorch's DistributedDataParallel, leaves are packed into buckets of at most `cap_bytes`,
in reverse order (the last layers' gradients, which the backward pass produces first, in the first
bucket), one dtype per bucket; a leaf at least `cap_bytes` large is a bucket of its own (on XLA's
CPU backend one buffer of the whole 2.7 MB gradient ran at half the two-bucket rate). The
all-reduce's values are exactly those of a per-leaf `pmean` (the mean is elementwise, whatever
the packing; tested), but XLA compiles the step around it differently, so a whole run can differ
from a per-leaf one at float rounding (~1e-7 in the loss after a few updates);
`sync.bucket_mb=0` reproduces runs made before buckets bit for bit.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def plan(leaves, cap_bytes: int) -> list[list[int]]:
  """Buckets as lists of leaf indices: reverse leaf order, one dtype each, at most `cap_bytes`
  (a leaf of `cap_bytes` or more alone). `cap_bytes` <= 0: one bucket per leaf."""
  if cap_bytes <= 0:
    return [[i] for i in range(len(leaves))]
  buckets: list[list[int]] = []
  open_: dict = {}  # dtype -> (bucket, bytes so far)
  for i in reversed(range(len(leaves))):
    x = leaves[i]
    size = math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
    if size >= cap_bytes:
      buckets.append([i])
      continue
    bucket, used = open_.get(jnp.dtype(x.dtype), (None, 0))
    if bucket is None or used + size > cap_bytes:
      bucket, used = [], 0
      buckets.append(bucket)
    bucket.append(i)
    open_[jnp.dtype(x.dtype)] = (bucket, used + size)
  return buckets


def pmean(tree, axis_name: str, cap_bytes: int):
  """`lax.pmean(tree, axis_name)` with the leaves packed into buckets (see the module doc)."""
  leaves, treedef = jax.tree.flatten(tree)
  buckets = plan(leaves, cap_bytes)
  flat = [leaves[b[0]] if len(b) == 1 else
          jnp.concatenate([jnp.ravel(leaves[i]) for i in b]) for b in buckets]
  reduced = jax.lax.pmean(flat, axis_name)
  out = list(leaves)
  for b, r in zip(buckets, reduced):
    if len(b) == 1:
      out[b[0]] = r
      continue
    offset = 0
    for i in b:
      n = math.prod(leaves[i].shape)
      out[i] = r[offset:offset + n].reshape(leaves[i].shape)
      offset += n
  return jax.tree.unflatten(treedef, out)
