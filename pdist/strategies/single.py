"""`single`: plain training on one device.

Updates run in compiled chunks: one jitted `lax.scan` over the log interval's batch indices, with
the training set resident on the device and each batch gathered inside the scan. So the Python loop
costs one dispatch per log interval, not one per update.

One update (`update`): gradient of the batch -> local pipeline -> aggregate (nothing here; the
all-reduce in `sync`) -> central pipeline -> optimizer. `Sync` reuses all of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pdist import optim
from pdist import pipeline as pipeline_lib
from pdist import privacy as privacy_lib
from pdist.data import batch_indices
from pdist.registry import STRATEGIES
from pdist.strategies import base
from pdist.tasks import Task


@STRATEGIES.register("single")
class Single(base.Strategy):

  def __init__(self, config, task: Task, device: jax.Device | None = None,
               pipeline: pipeline_lib.Pipeline | None = None):
    self.task = task
    self.tx = optim.build(config)
    self.seed = config.train.seed
    self.batch_size = config.data.batch_size
    self.device = device or jax.devices()[0]
    arrays = base.training_arrays(task)
    self.data = None if arrays is None else self.place_data(arrays)
    accumulate = config.optim.accumulate_steps
    # differential privacy: Poisson batches, per-example clipping, noise after aggregation
    self.privacy = privacy_lib.build(config, task.dataset.num_train,
                                     shards=self.batch_pieces() * accumulate)
    compute = None
    if self.privacy is not None:
      sample = {"x": task.dataset.x_train[:2], "y": task.dataset.y_train[:2]}
      compute = self.privacy.grad_fn(task, self.batch_size / (self.batch_shards() * accumulate),
                                     sample)
    self._grad = base.grad_fn(task, accumulate, compute)
    if pipeline is None:
      pipeline = pipeline_lib.build(config, jax.eval_shape(task.init, jax.random.PRNGKey(0)))
      if self.privacy is not None:
        pipeline = pipeline.with_central(self.privacy.noise())
    self.pipeline = pipeline
    self._chunk = jax.jit(self._run_chunk, static_argnums=(3, 4), donate_argnums=(0,))

  def place_data(self, host: dict):
    """The training arrays, on the device(s) this strategy computes on."""
    return jax.device_put(host, self.device)

  def batch_shards(self) -> int:
    """Pieces one batch is cut into across devices (1 here)."""
    return 1

  def batch_pieces(self) -> int:
    """Pieces the devices cut one batch into (DP-SGD's batch cap is a multiple of it): as
    batch_shards(), unless the math is the whole batch's but its rows are spread (`Sharded`)."""
    return self.batch_shards()

  def local_copies(self) -> int:
    """How many copies of the local pipeline state the state holds (0: one, unstacked)."""
    return 0

  def initial_state(self, rng):
    """The state before any update (on the default device)."""
    init_key, step_key = base.init_keys(rng)
    params = self.task.init(init_key)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": self.tx.init(params), "step_key": step_key,
            "pipeline": pipeline_lib.init_state(self.pipeline, params, self.local_copies())}

  def init(self, rng):
    return jax.device_put(self.initial_state(rng), self.device)

  # -- one update; data-parallel strategies override the hooks ------------------------------------
  def gradients(self, params, batch, rng):
    """(grads, (loss, aux)) of this device's batch."""
    return self._grad(params, batch, rng)

  def aggregate(self, grads, metrics):
    """Combines the devices' gradients and metrics (nothing to combine on one device)."""
    return grads, metrics

  def local_view(self, local_state, key):
    """(this device's slice of the local pipeline state, this device's pipeline key)."""
    return local_state, key

  def local_store(self, local_state):
    """The inverse of local_view for the updated slice."""
    return local_state

  def place(self, what: str, tree):
    """Where `tree` (what: batch, grads, update_params (what the optimizer updates), params
    (after the update) or opt_state) lives during the update: as it is here; `sync` on a mesh
    with fsdp or tensor places it as its layout says."""
    return tree

  def update(self, state, batch):
    """One update: theta <- optimizer(theta, central(aggregate(local(grad(theta, batch)))))."""
    rng = jax.random.fold_in(state["step_key"], state["step"])
    params = state["params"]
    grads, (loss, aux) = self.gradients(params, self.place("batch", batch), rng)
    grads = self.place("grads", grads)
    key = jax.random.fold_in(rng, base.PIPELINE_SALT)
    local, local_key = self.local_view(state["pipeline"]["local"], key)
    grads, local, local_stats = self.pipeline.local.update(grads, local, None, local_key)
    grads, metrics = self.aggregate(grads, {"loss": loss, **aux, **local_stats})
    if self.privacy is not None:  # aggregated sums -> means over the real examples
      metrics = privacy_lib.clipping.finalize_metrics(metrics, {"loss", *aux})
    grads, central, central_stats = self.pipeline.central.update(
        grads, state["pipeline"]["central"], params, key)
    params, opt_state = optim.apply_gradient(self.tx, self.place("update_params", params),
                                             state["opt_state"], grads)
    params, opt_state = self.place("params", params), self.place("opt_state", opt_state)
    new = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state,
               pipeline={"local": self.local_store(local), "central": central})
    return new, {**metrics, **central_stats}

  def _run_chunk(self, state, data, indices, num_updates: int, segments=None):
    """`num_updates` updates as one `lax.scan`; their mean metrics, or with `segments` (a tuple
    of row lengths summing to num_updates) a list of one mean per row."""
    def body(state, idx):
      return self.update(state, base.gather_batch(data, idx))

    state, per_step = jax.lax.scan(body, state, indices, length=num_updates)
    if segments is None:
      return state, base.mean_metrics(per_step)
    return state, base.segment_means(per_step, segments)

  def indices(self, step: int, num_updates: int):
    """The batches of updates [step, step + num_updates): [n, B] indices, or under Poisson
    sampling {"idx", "mask"} of [n, cap]."""
    if self.data is None:
      return None
    if self.privacy is not None and self.privacy.poisson:
      return self.privacy.batches(self.seed, step, num_updates)
    return batch_indices(self.seed, step, self.batch_size, self.task.dataset.num_train,
                         num_steps=num_updates)

  def run(self, state, num_updates: int):
    state, pending = self.dispatch(state, num_updates)
    return state, self.collect(pending)

  segmented = True

  def dispatch(self, state, num_updates: int, step: int | None = None, segments=None):
    """Queues the chunk on the device and returns at once (JAX's asynchronous dispatch), so the
    train loop can write the previous chunk's row while this one runs. `segments`: the lengths
    of the rows this call covers (default: one row)."""
    step = self.step(state) if step is None else step
    segments = base.row_segments(num_updates, segments)
    state, metrics = self._call(state, self.indices(step, num_updates), num_updates, segments)
    return state, (metrics, step, segments)

  def _call(self, state, idx, num_updates: int, segments):
    """Queues the compiled chunk on the batch indices `idx`."""
    return self._chunk(state, self.data, idx, num_updates, segments)

  def collect(self, pending):
    rows = self.collect_rows(pending)
    if len(rows) != 1:
      raise ValueError(f"collect() of a call with {len(rows)} rows; use collect_rows()")
    return rows[0]

  def collect_rows(self, pending):
    metrics, step, segments = pending
    host = jax.device_get(metrics)  # one transfer for every row
    rows = []
    for n, m in zip(segments, host):
      step += n
      rows.append(self.host_metrics(m, step))
    return rows

  def host_metrics(self, metrics, step: int) -> dict[str, float]:
    """The chunk's metrics on the host, plus the privacy budget spent by `step`."""
    out = base.to_host(metrics)
    if self.privacy is not None:
      out.update(self.privacy.row_metrics(step))
    return out

  def describe(self, state) -> dict:
    if self.privacy is None:
      return {}
    return {"privacy": self.privacy.describe(self.step(state))}
