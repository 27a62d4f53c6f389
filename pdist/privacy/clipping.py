"""Per-example gradient clipping: the DP-SGD gradient of one batch (Abadi et al. 2016).

    g_i     = grad of example i's loss                          (per example, vmapped)
    s_i     = min(1, C / ||g_i||)                               (||.|| over all parameters)
    clipped = sum_i mask_i s_i g_i / expected_examples

Each clipped g_i has norm <= C, so adding or removing one example changes `clipped * expected`
by at most C: the sensitivity that the Gaussian noise (noise.py) is calibrated to. Dividing by the
*expected* number of examples (a public constant), not the number drawn, keeps that true under
Poisson sampling, where the drawn number itself is private.

Gradient accumulation and data parallelism keep clipping per example: every example lives in one
micro-batch on one device, each call divides by its own expected share, and averaging the calls
(micro-batches, then devices) gives the clipped sum over the whole batch / expected batch size.

.. warning:: The rule for models: an example's loss must depend on that example alone (no batch
   normalisation or other cross-example statistics), or per-example clipping bounds nothing.
   Every pdist model satisfies it today.

Norms, scales and the clipped sum are computed in float32 whatever config.model.dtype is.

Two ways to the same clipped sum:
- **dense** (fast; models whose parameters all sit in `flax.linen.Dense` layers applied to
  [batch, features] inputs, e.g. the MLP): one forward pass records each layer's input a_i and adds
  a zero perturbation to its output, one backward pass gives each example's output gradient g_i,
  and the per-example weight gradient is the outer product a_i g_i^T, so its squared norm is
  ||a_i||^2 ||g_i||^2 (+ ||g_i||^2 for the bias) without ever materialising it; the clipped sum is
  A^T diag(s) G (Goodfellow 2015; Li et al. 2022's ghost clipping). Cost: about one ordinary step.
- **vmap** (any model): per-example gradients by `vmap(grad)`, CHUNK examples at a time.
`clipped_grad_fn` picks dense when the model qualifies (checked by tracing it once) and vmap
otherwise; both give the same numbers to rounding (tests/test_privacy.py).

`clipped_grad_fn` returns a function with the signature of `strategies.base.grad_fn`; its metrics
are sums over the batch divided by the expected examples, plus `examples`, so that strategies can
turn them into exact means over the real examples after aggregating (`finalize_metrics`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

CHUNK = 64  # per-example gradients materialised at a time (bounds memory: CHUNK x parameters)


def clip_scales(norms: jax.Array, clip_norm: float) -> jax.Array:
  """min(1, C / norm), written so that norm 0 and C = inf give 1."""
  return jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12))


def _masked(batch):
  x = batch["x"]
  mask = batch.get("mask")
  return jnp.ones((x.shape[0],), jnp.float32) if mask is None else mask.astype(jnp.float32)


def _sums(losses, clipped_count, metrics, mask):
  return {"loss": jnp.sum(losses * mask), "clipped": clipped_count,
          **{k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in metrics.items()}}


def _finish(clipped, sums, mask, expected_examples):
  scale = 1.0 / expected_examples
  clipped = jax.tree.map(lambda g: g * scale, clipped)
  metrics = {k: v * scale for k, v in sums.items() if k != "loss"}
  metrics["examples"] = jnp.sum(mask) * scale
  return clipped, (sums["loss"] * scale, metrics)


def _varying_like(value, reference):
  """`value` made device-varying along the mesh axes `reference` varies over (inside shard_map a
  gradient with respect to a replicated value would be summed over the devices)."""
  manual = getattr(jax.typeof(reference), "manual_axis_type", None)
  axes = tuple(sorted(getattr(manual, "varying", ()) or ()))
  return jax.lax.pcast(value, axes, to="varying") if axes else value


def _is_dense_call(context) -> bool:
  return isinstance(context.module, nn.Dense) and context.method_name == "__call__"


def dense_layers(task, params, batch):
  """[(module path, use_bias)] of the Dense calls of one forward pass if every parameter sits in a
  Dense layer called once on a [batch, features] input; None otherwise (use vmap)."""
  calls = []

  def record(next_fun, args, kwargs, context):
    if _is_dense_call(context):
      calls.append((tuple(context.module.path), args[0].ndim, context.module.use_bias))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda p: task.per_example_loss(p, batch, None), params)
  if not calls or any(ndim != 2 for _, ndim, _ in calls):
    return None
  paths = [path for path, _, _ in calls]
  if len(set(paths)) != len(paths):
    return None
  covered = 0
  for path, _, use_bias in calls:
    node = params
    for key in path:
      if not isinstance(node, dict) or key not in node:
        return None
      node = node[key]
    if set(node) != ({"kernel", "bias"} if use_bias else {"kernel"}):
      return None
    covered += len(node)
  if covered != len(jax.tree.leaves(params)):
    return None
  return [(path, use_bias) for path, _, use_bias in calls]


def dense_clipped_grad_fn(task, clip_norm: float, expected_examples: float, layers):
  """The clipped gradient of a model made of Dense layers, without per-example gradients."""
  def grad(params, batch, rng):
    mask = _masked(batch)

    def loss_with(perturbations):
      inputs, position = [], [0]

      def perturb(next_fun, args, kwargs, context):
        if not _is_dense_call(context):
          return next_fun(*args, **kwargs)
        inputs.append(args[0])
        out = next_fun(*args, **kwargs) + perturbations[position[0]]
        position[0] += 1
        return out

      with nn.intercept_methods(perturb):
        losses, metrics = task.per_example_loss(params, batch, rng)
      return jnp.sum(losses * mask), (losses, metrics, inputs)

    def output_shapes():
      shapes = []

      def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _is_dense_call(context):
          shapes.append(out)
        return out

      with nn.intercept_methods(record):
        task.per_example_loss(params, batch, rng)
      return shapes

    zeros = [_varying_like(jnp.zeros(s.shape, s.dtype), batch["x"])
             for s in jax.eval_shape(output_shapes)]
    outs_grad, (losses, metrics, inputs) = jax.grad(loss_with, has_aux=True)(zeros)
    # norms, scales and sums in float32 whatever the model computes in (bfloat16 norms let a
    # clipped gradient exceed C)
    inputs = [a.astype(jnp.float32) for a in inputs]
    outs_grad = [g.astype(jnp.float32) for g in outs_grad]
    norm2 = 0.0
    for (path, use_bias), a, g in zip(layers, inputs, outs_grad):
      g2 = jnp.sum(g * g, axis=1)
      norm2 = norm2 + jnp.sum(a * a, axis=1) * g2 + (g2 if use_bias else 0.0)
    norms = jnp.sqrt(norm2)
    scales = clip_scales(norms, clip_norm)
    clipped = jax.tree.map(jnp.zeros_like, params)
    for (path, use_bias), a, g in zip(layers, inputs, outs_grad):
      node = clipped
      for key in path[:-1]:
        node = node[key]
      sg = g * scales[:, None]
      leaf = {"kernel": a.T @ sg}
      if use_bias:
        leaf["bias"] = jnp.sum(sg, axis=0)
      node[path[-1]] = leaf
    real = mask > 0
    sums = _sums(losses, jnp.sum((norms > clip_norm) & real).astype(jnp.float32), metrics, mask)
    return _finish(clipped, sums, mask, expected_examples)

  grad.method = "dense"
  return grad


def clipped_grad_fn(task, clip_norm: float, expected_examples: float, sample_batch=None,
                    method: str = "auto"):
  """params, batch, rng -> (clipped sum / expected_examples, (loss, metrics)) for a batch with a
  "mask" (all ones when missing). `method`: auto (dense when the model allows, else vmap),
  dense, or vmap; `sample_batch` is a batch to check the model's layers on."""
  if method != "vmap" and sample_batch is not None:
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    layers = dense_layers(task, params, sample_batch)
    if layers is not None:
      return dense_clipped_grad_fn(task, clip_norm, expected_examples, layers)
  if method == "dense":
    raise ValueError("the model is not made of Dense layers on [batch, features] inputs")
  return vmap_clipped_grad_fn(task, clip_norm, expected_examples)


def vmap_clipped_grad_fn(task, clip_norm: float, expected_examples: float):
  """The clipped gradient from per-example gradients (vmap(grad)), CHUNK examples at a time."""
  def example_loss(params, x, y, rng):
    losses, metrics = task.per_example_loss(params, {"x": x[None], "y": y[None]}, rng)
    return losses[0], jax.tree.map(lambda v: v[0], metrics)

  per_example = jax.vmap(jax.value_and_grad(example_loss, has_aux=True),
                         in_axes=(None, 0, 0, None))

  def chunk(params, xs, ys, mask, rng):
    (losses, metrics), grads = per_example(params, xs, ys, rng)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)   # clipping runs in float32
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
                         for g in jax.tree.leaves(grads)))
    weights = clip_scales(norms, clip_norm) * mask
    clipped = jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), grads)
    return clipped, _sums(losses, jnp.sum((norms > clip_norm) * mask), metrics, mask)

  def grad(params, batch, rng):
    x, y = batch["x"], batch["y"]
    mask = _masked(batch)
    b = x.shape[0]
    size = min(CHUNK, b)
    pad = -b % size
    if pad:
      x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
      y = jnp.concatenate([y, jnp.zeros((pad,) + y.shape[1:], y.dtype)])
      mask = jnp.concatenate([mask, jnp.zeros((pad,), mask.dtype)])
    pieces = (b + pad) // size
    split = lambda v: v.reshape((pieces, size) + v.shape[1:])  # noqa: E731

    def body(total, piece):
      clipped, sums = chunk(params, *piece, rng)
      return jax.tree.map(jnp.add, total, (clipped, sums)), None

    pieces_xs = (split(x), split(y), split(mask))
    # the first piece starts the sums (so they carry the right sharding type inside shard_map)
    first = chunk(params, *jax.tree.map(lambda v: v[0], pieces_xs), rng)
    rest = jax.tree.map(lambda v: v[1:], pieces_xs)
    (clipped, sums), _ = jax.lax.scan(body, first, rest) if pieces > 1 else (first, None)
    return _finish(clipped, sums, mask[:b] if pad else mask, expected_examples)

  grad.method = "vmap"
  return grad


def finalize_metrics(metrics: dict, keys) -> dict:
  """The gradient's aggregated `keys` (sums / expected examples) -> means over the real examples;
  `clipped` -> clipped_fraction; `examples` -> batch_fill (real examples / expected examples).
  Other metrics (e.g. pipeline statistics) are left as they are."""
  examples = metrics["examples"]
  denom = jnp.maximum(examples, 1e-12)
  out = {k: (v / denom if k in keys else v) for k, v in metrics.items()
         if k not in ("examples", "clipped")}
  out["clipped_fraction"] = metrics["clipped"] / denom
  out["batch_fill"] = examples
  return out
