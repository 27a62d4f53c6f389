"""`sync` on the named mesh (data x fsdp x tensor, ZeRO 1-3): every layout is single-device
training on the same global batch, with the state placed as the layout says."""

import jax
import numpy as np
import pytest

from conftest import load_experiment, max_diff
from pdist import config as config_lib
from pdist import train
from pdist.parallel import layout
from pdist.registry import ConfigError
from jax.sharding import PartitionSpec as P

# float32 sums over the batch and over shards run in another order on each layout: 20 Adam
# updates then differ at ~1e-6 relative; a wrong update (a missing mean, a slice applied twice)
# moves the parameters by > 1e-3 (asserted below).
TOL = 2e-5


def _mlp(strategy="sync", steps=20, **fields):
  c = load_experiment("mnist1d", "tiny")
  c.strategy = strategy
  c.optim.name, c.optim.learning_rate = "adam", 0.003
  c.data.batch_size = 64
  c.model.hidden = (64, 64)
  c.train.steps, c.train.log_every, c.train.eval_every = steps, 10, 0
  c.train.progress = False
  for key, value in fields.items():
    config_lib.set_field(c, key.replace("__", "."), value)
  return c


def _lm(strategy="sync", **fields):
  c = load_experiment("charlm", "tiny")
  c.strategy = strategy
  c.model.width, c.model.heads = 32, 4
  # plain SGD: Adam turns a ~1e-12 difference in a near-zero gradient (a byte the batch never
  # holds) into a step of size lr, so its parameters cannot be compared at float tolerance
  c.optim.name, c.optim.learning_rate, c.optim.weight_decay = "sgd", 0.1, 0.0
  c.data.batch_size = 16
  c.train.steps, c.train.log_every, c.train.eval_every = 10, 5, 0
  c.train.progress, c.train.tensorboard = False, False
  for key, value in fields.items():
    config_lib.set_field(c, key.replace("__", "."), value)
  return c


LAYOUTS = {
    "fsdp8_zero1": dict(sync__mesh__data=1, sync__mesh__fsdp=8, sync__zero=1),
    "fsdp8_zero2": dict(sync__mesh__data=1, sync__mesh__fsdp=8, sync__zero=2),
    "fsdp8_zero3": dict(sync__mesh__data=1, sync__mesh__fsdp=8, sync__zero=3),
    "tensor8": dict(sync__mesh__data=1, sync__mesh__tensor=8),
    "data4_tensor2": dict(sync__mesh__tensor=2),
    "fsdp4_tensor2_zero3": dict(sync__mesh__data=1, sync__mesh__fsdp=4, sync__mesh__tensor=2,
                                sync__zero=3),
    "data2_fsdp2_tensor2_zero2": dict(sync__mesh__data=2, sync__mesh__fsdp=2,
                                      sync__mesh__tensor=2, sync__zero=2),
}


@pytest.fixture(scope="module")
def single_mlp():
  return train.run(_mlp("single"))


QUICK = ("fsdp8_zero3", "tensor8", "fsdp4_tensor2_zero3")   # data2 x fsdp2 x tensor2: the DP test


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.long)
                                  for n in sorted(LAYOUTS)])
def test_mlp_layout_equals_single_device(name, single_mlp):
  got = train.run(_mlp(**LAYOUTS[name]))
  assert type(got.strategy).__name__ in ("Sharded", "Zero")   # GSPMD or written-out ZeRO
  assert max_diff(single_mlp.params, got.params) < TOL, name
  for a, b in zip(single_mlp.rows, got.rows):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_the_updates_really_move_the_parameters(single_mlp):
  one = train.run(_mlp("single", steps=1))
  assert max_diff(single_mlp.params, one.params) > 1e-3   # so TOL is a real bound


@pytest.mark.parametrize("name", ["fsdp8_zero3"] + [pytest.param(n, marks=pytest.mark.long)
                                                   for n in ("tensor8", "data2_fsdp2_tensor2_zero2")])
def test_transformer_layout_equals_single_device(name):
  ref = train.run(_lm("single"))
  got = train.run(_lm(**LAYOUTS[name]))
  assert max_diff(ref.params, got.params) < TOL, name
  for a, b in zip(ref.rows, got.rows):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_zero_stages_place_the_state_as_the_paper_says():
  """Per device, in bytes, against the leaves' sizes counted by hand: ZeRO-1 shards the
  optimizer state only, ZeRO-2 also the gradient, ZeRO-3 also the parameters (Rajbhandari et
  al. 2020, Figure 1); with 8 devices each holds about 1/8 of what is sharded."""
  hidden = (256, 256)
  # mnist1d: 40 inputs, 10 classes; Adam keeps mu and nu, each the size of the parameters
  sizes = [40 * 256, 256, 256 * 256, 256, 256 * 10, 10]
  total = 4 * sum(sizes)
  peaks = {}
  for zero in (1, 2, 3):
    got = train.run(_mlp(model__hidden=hidden, steps=2, sync__mesh__data=1,
                         sync__mesh__fsdp=8, sync__zero=zero)).summary["memory"]
    assert got["params_bytes_total"] == total
    # XLA's analysis of the compiled step holds at least the state it is given
    peaks[zero] = got["peak_bytes_per_device"]
    assert peaks[zero] >= got["params_bytes_per_device"] + got["optimizer_bytes_per_device"]
    # the optimizer state (mu, nu) is sharded from stage 1 on: within 5% of 2 x total / 8
    assert got["optimizer_bytes_per_device"] <= 1.05 * 2 * total / 8
    expect_grad = total / 8 if zero >= 2 else total
    assert got["gradient_bytes_per_device"] == pytest.approx(expect_grad, rel=0.05)
    expect_params = total / 8 if zero >= 3 else total
    assert got["params_bytes_per_device"] == pytest.approx(expect_params, rel=0.05)
  assert peaks[3] < peaks[1]   # parameters stored as 1/8 blocks: a smaller step


def test_tensor_rules_are_megatron_pairs():
  """Column-parallel then row-parallel: the first kernel of a pair is split along its outputs,
  the second along its inputs; the classifier alone stays whole; the transformer block's qkv and
  first MLP layer column, its `out` and second MLP layer row."""
  sizes = {"data": 1, "fsdp": 1, "tensor": 2, "pipeline": 1}
  spec = lambda path, shape, layers=3: layout.spec_for(path, shape, sizes, layers, fsdp=False)
  assert spec("Dense_0/kernel", (40, 64)) == P(None, "tensor")
  assert spec("Dense_0/bias", (64,)) == P("tensor")
  assert spec("Dense_1/kernel", (64, 64)) == P("tensor")
  assert spec("Dense_1/bias", (64,)) == P()
  assert spec("Dense_2/kernel", (64, 10)) == P()          # the classifier, alone
  assert spec("Dense_1/kernel", (64, 10), layers=2) == P("tensor")   # row: it pairs
  block = "Block_0/CausalSelfAttention_0"
  assert spec(f"{block}/qkv/kernel", (32, 96)) == P(None, "tensor")
  assert spec(f"{block}/out/kernel", (32, 32)) == P("tensor")
  assert spec("Block_0/Dense_0/kernel", (32, 128)) == P(None, "tensor")
  assert spec("Block_0/Dense_1/kernel", (128, 32)) == P("tensor")
  assert spec("embed/embedding", (256, 32)) == P()
  assert spec("Dense_0/kernel", (40, 63)) == P()          # 2 does not divide 63
  both = {"data": 1, "fsdp": 4, "tensor": 2, "pipeline": 1}
  assert layout.spec_for("Dense_0/kernel", (40, 64), both, 3, fsdp=True) == \
      P("fsdp", "tensor")   # fsdp takes the largest dimension tensor left free that 4 divides


def test_mesh_sizes():
  c = _mlp(sync__mesh__data=0, sync__mesh__fsdp=2, sync__mesh__tensor=2, sync__zero=1)
  assert layout.mesh_sizes(c, 8) == {"data": 2, "fsdp": 2, "tensor": 2, "pipeline": 1}
  assert not layout.is_sharded(_mlp())   # the default: today's data parallelism


@pytest.mark.parametrize("fields, message", [
    (dict(sync__zero=3), "fsdp axis, which has size 1"),
    (dict(sync__mesh__fsdp=8, sync__mesh__data=1), "with config.sync.zero=0 would replicate"),
    (dict(sync__mesh__fsdp=0, sync__mesh__data=0, sync__zero=1), "only one axis may be 0"),
    (dict(sync__mesh__tensor=3, sync__mesh__data=1), "has 3 devices, the run has 8"),
    (dict(sync__mesh__pipeline=2, model__hidden=(64, 32, 64)), "must be two or more equal"),
    (dict(sync__mesh__pipeline=2, model__hidden=(64, 64, 64, 64)), "need a block count"),
    (dict(sync__mesh__pipeline=2, sync__microbatches=3, model__hidden=(64, 64, 64)),
     "must be a multiple of it"),
    (dict(sync__microbatches=4), "config.sync.mesh.pipeline=1"),
    (dict(sync__mesh__pipeline=0, sync__mesh__data=2), "give the pipeline an explicit size"),
    (dict(sync__mesh__pipeline=2, privacy__mechanism="dpsgd"), "with DP-SGD"),
    (dict(sync__mesh__pipeline=2, model__qat=True), "config.model.qat"),
    (dict(sync__mesh__pipeline=2, model__name="cnn1d"), "needs config.model.name='transformer'"),
    (dict(sync__zero=4, sync__mesh__fsdp=8, sync__mesh__data=1), "config.sync.zero must be one of"),
    (dict(sync__mesh__tensor=2, compression__name="int8"), "config.compression"),
    (dict(sync__mesh__tensor=2, sync__backend="pmap"), "jax.jit over the named mesh"),
    (dict(sync__mesh__fsdp=8, sync__mesh__data=1, sync__zero=1, data__batch_size=4),
     "not divisible by data x fsdp"),
])
def test_bad_layouts_are_refused_in_one_sentence(fields, message):
  with pytest.raises(ConfigError, match=message):
    c = _mlp(**fields)
    config_lib.validate(c)
    train.run(c)


def test_local_and_gossip_refuse_a_sharded_mesh():
  c = _mlp("local", sync__mesh__tensor=2)
  with pytest.raises(ConfigError, match="one whole replica per device"):
    config_lib.validate(c)


def test_resume_on_another_mesh_restores_the_state_bit_for_bit(tmp_path):
  """Saved under fsdp 8 (ZeRO-3), resumed under data 2 x fsdp 2 x tensor 2, then data only:
  the restored parameters and optimizer state equal the saved ones exactly, and training
  continues to single-device training's result."""
  work = str(tmp_path / "run")
  first = train.run(_mlp(steps=10, sync__mesh__data=1, sync__mesh__fsdp=8, sync__zero=3,
                         checkpoint__every=10), work)
  saved = jax.device_get((first.state["params"], first.state["opt_state"]))
  second = _mlp(steps=10, sync__mesh__data=2, sync__mesh__fsdp=2, sync__mesh__tensor=2,
                sync__zero=2, checkpoint__every=10)
  from pdist import checkpoint as ckpt_lib, strategies, tasks, data
  task = tasks.build(second, data.load(second.data))
  strategy = strategies.build(second, task)
  template = strategy.init(jax.random.PRNGKey(0))
  step, restored, _ = ckpt_lib.Checkpointer(f"{work}/checkpoints").restore_latest(
      template, second.to_dict(), config_lib.base_config().to_dict())
  assert step == 10
  got = jax.device_get((restored["params"], restored["opt_state"]))
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(got)):
    assert np.array_equal(a, b)
  assert restored["params"]["Dense_0"]["kernel"].sharding.spec == P(None, "tensor")
  # and the runs go on: 10 more updates on the new mesh, 10 more on data parallelism only
  train.run(_mlp(steps=20, sync__mesh__data=2, sync__mesh__fsdp=2, sync__mesh__tensor=2,
                 sync__zero=2, checkpoint__every=10), work)
  last = train.run(_mlp(steps=30, checkpoint__every=10), work)
  assert last.summary["resumed_from"] == 20
  assert max_diff(train.run(_mlp("single", steps=30)).params, last.params) < TOL


@pytest.mark.long   # multi-process sync is in make test (tests/test_sync.py); this mesh in test-all
@pytest.mark.parametrize("layout", ["data2_fsdp2_tensor2_zero3", "pipeline8"])
def test_two_processes_equal_one_process(tmp_path, layout):
  """data 2 x fsdp 2 x tensor 2 (ZeRO-3), and an 8-stage pipeline whose activations cross from
  one process to the other, over 2 processes x 4 devices (gloo on loopback): the parameters of
  one process with 8 devices."""
  import os
  from conftest import run_one_and_two_processes
  mesh = {"data2_fsdp2_tensor2_zero3": [
      "--config.sync.mesh.data=2", "--config.sync.mesh.fsdp=2", "--config.sync.mesh.tensor=2",
      "--config.sync.zero=3"],
      "pipeline8": ["--config.sync.mesh.data=1", "--config.sync.mesh.pipeline=8",
                    "--config.sync.microbatches=8",
                    "--config.model.hidden=(" + "32," * 9 + ")"]}[layout]
  args = ["--config", "experiments/mnist1d.py:tiny,mlp", "--config.strategy=sync",
          "--config.data.batch_size=64", *mesh, "--config.train.steps=20",
          "--config.train.log_every=10", "--config.train.progress=False",
          "--config.train.save_params=True"]
  one, two = run_one_and_two_processes(args, tmp_path, devices_per_process=4)
  a, b = train.load_params(os.path.join(one, "params.npz")), \
      train.load_params(os.path.join(two, "params.npz"))
  assert a.keys() == b.keys() and len(a) > 0
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("model", ["mlp", pytest.param("transformer", marks=pytest.mark.long)])
def test_remat_recomputes_the_same_update(model):
  """model.remat=block: the same parameters (jax.checkpoint recomputes the same ops), and the
  program holds one checkpoint barrier per block (hidden layer) where none had any. (XLA's CPU
  memory analysis reports the same temporaries either way here, so memory is not asserted.)"""
  from pdist import data, strategies, tasks
  make = (lambda **f: _mlp("single", model__hidden=(64, 64, 64), **f)) if model == "mlp" \
      else (lambda **f: _lm("single", model__layers=3, **f))
  barriers, params = {}, {}
  for remat in ("none", "block"):
    c = make(model__remat=remat, train__steps=8)
    params[remat] = train.run(c).params
    task = tasks.build(c, data.load(c.data))
    p = task.init(jax.random.PRNGKey(0))
    batch = {"x": task.dataset.x_train[:8], "y": task.dataset.y_train[:8]}
    text = jax.jit(jax.grad(lambda q: task.loss(q, batch, None)[0])).lower(p).as_text()
    barriers[remat] = text.count("optimization_barrier")
  assert max_diff(params["none"], params["block"]) < 1e-6
  assert barriers["none"] == 0 and barriers["block"] >= 3, barriers


@pytest.mark.parametrize("extra, tol", [
    (dict(privacy__mechanism="dpsgd", privacy__noise_multiplier=1.0, privacy__clip_norm=1.0),
     TOL),   # Poisson batches, per-example clipping, the same noise draw: single's DP-SGD
    pytest.param(dict(optim__accumulate_steps=2), TOL, marks=pytest.mark.long),   # Zero's too
])
def test_layouts_compose_with_dp_sgd_and_accumulation(extra, tol):
  ref = train.run(_mlp("single", **extra))
  got = train.run(_mlp(**LAYOUTS["data2_fsdp2_tensor2_zero2"], **extra))
  assert max_diff(ref.params, got.params) < tol


def test_layouts_compose_with_bf16_mixed_precision():
  """bf16 compute, float32 master weights and optimizer state on the layout; bf16 sums in
  another order differ at bf16's precision (8 bits of mantissa: ~4e-3 relative), so the losses
  are compared at 1e-3 relative over 20 updates."""
  ref = train.run(_mlp("single", model__dtype="bfloat16"))
  got = train.run(_mlp(**LAYOUTS["fsdp4_tensor2_zero3"], model__dtype="bfloat16"))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(got.state["params"]))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(got.state["opt_state"])
             if x.ndim > 0)
  for a, b in zip(ref.rows, got.rows):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)


def _compiled_collectives(**fields):
  from pdist import data, strategies, tasks
  c = _mlp(model__hidden=(256, 256), **fields)
  s = strategies.build(c, tasks.build(c, data.load(c.data)))
  state = s.init(jax.random.PRNGKey(0))
  idx = jax.device_put(s.indices(0, 1), s._indices_sharding)
  text = s._chunk.lower(state, s.data, idx, 1, None).compile().as_text()
  return type(s).__name__, layout.collectives(text)


def test_zero_collectives_are_the_textbook_ones():
  """The compiled update's collectives, counted by hand from the MLP 40-256-256-10 on fsdp 8:
  the leaves 8 divides (every kernel and the two hidden biases) hold S bytes; the classifier's
  bias (10 floats) and the row's metrics are all-reduced as in data parallelism.
    DDP      one all-reduce of the gradient (S)                     ring: 2 S (N-1)/N a device
    ZeRO-1   all-reduce of the gradient, all-gather of the updated blocks: 3 S (N-1)/N
    ZeRO-2   reduce-scatter of the gradient, all-gather of the blocks:   2 S (N-1)/N (= DDP)
    ZeRO-3   all-gather of the parameters where used, reduce-scatter of the gradient (the
             backward pass's second gather is merged with the first by XLA's CPU compiler)."""
  s_bytes = 4 * (40 * 256 + 256 + 256 * 256 + 256 + 256 * 10)
  small = 4 * 10
  metric_bytes = 4 * 2    # loss, accuracy
  name, ddp = _compiled_collectives(sync__bucket_mb=0.0)
  assert name == "Sync" and set(ddp) == {"all-reduce"}
  assert ddp["all-reduce"]["bytes"] == s_bytes + small + metric_bytes
  fsdp8 = dict(sync__mesh__data=1, sync__mesh__fsdp=8)
  name, z1 = _compiled_collectives(**fsdp8, sync__zero=1)
  assert name == "Zero" and set(z1) == {"all-reduce", "all-gather"}
  assert z1["all-reduce"]["bytes"] == s_bytes + small + metric_bytes
  assert z1["all-gather"] == {"count": 5, "bytes": s_bytes}
  for zero in (2, 3):
    _, z = _compiled_collectives(**fsdp8, sync__zero=zero)
    assert set(z) == {"all-reduce", "all-gather", "reduce-scatter"}, (zero, z)
    assert z["reduce-scatter"] == {"count": 5, "bytes": s_bytes // 8}, zero   # a block each
    assert z["all-gather"] == {"count": 5, "bytes": s_bytes}, zero
    assert z["all-reduce"]["bytes"] == small + metric_bytes, zero


def test_zero_with_written_out_collectives_equals_single_device(single_mlp):
  """The explicit path (strategies/sync.py's Zero) with data x fsdp and accumulation."""
  for fields in (dict(sync__mesh__data=2, sync__mesh__fsdp=4, sync__zero=3),
                 dict(sync__mesh__data=4, sync__mesh__fsdp=2, sync__zero=2)):
    got = train.run(_mlp(**fields))
    assert type(got.strategy).__name__ == "Zero"
    assert max_diff(single_mlp.params, got.params) < TOL, fields
  acc = train.run(_mlp(sync__mesh__data=1, sync__mesh__fsdp=8, sync__zero=3,
                       optim__accumulate_steps=2))
  assert max_diff(single_mlp.params, acc.params) < TOL


@pytest.mark.parametrize("preset", ["", "fsdp8", "pipeline"])
def test_the_large_preset_holds_an_eighth_per_device(preset):
  """experiments/lm_large.py (100M parameters, 1.2 GB with Adam) laid out on 8 devices, from
  shapes only (nothing allocated): per device at most 1.05 x an eighth of the parameters and of
  the optimizer state (ZeRO-3; data 1 x fsdp 4 x tensor 2, fsdp 8, and pipeline 2 x fsdp 4 with
  the blocks stacked)."""
  import math
  from jax.sharding import Mesh
  from pdist import data, optim, tasks
  from pdist.parallel import stages
  c = load_experiment("lm_large", preset)
  task = tasks.build(c, data.load(c.data))
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  if preset == "pipeline":
    shapes = jax.eval_shape(lambda p: stages.stack(p, stages.parts(task.module).blocks), shapes)
  tx = optim.build(c)
  sizes = layout.mesh_sizes(c, 8)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape([sizes[a] for a in layout.AXES]), layout.AXES)
  lay = layout.Layout(mesh, sizes, 3, shapes, tx)

  def per_device(tree, specs):
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
    return sum(x.size * x.dtype.itemsize // math.prod(sizes[a] for a in s if a)
               for x, s in zip(jax.tree.leaves(tree), flat_specs))
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  assert total > 400e6   # >= 100M float32 parameters
  assert per_device(shapes, lay.param_specs) <= 1.05 * total / 8
  opt = jax.eval_shape(tx.init, shapes)
  opt_total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt))
  assert opt_total >= 2 * total   # Adam: two moments
  assert per_device(opt, lay.opt_specs) <= 1.05 * opt_total / 8


# -- pipeline parallelism (pdist/parallel/stages.py) ---------------------------------------------
def test_the_gpipe_schedule_table():
  """p = 3 stages, m = 2 micro-batches, written out by hand: 4 ticks, stage s on micro-batch
  t - s; 6 of the 12 slots idle = (p - 1) / (m + p - 1) (Huang et al. 2019)."""
  from pdist.parallel import stages as stages_lib
  table = stages_lib.schedule(3, 2)
  assert table.tolist() == [[0, -1, -1], [1, 0, -1], [-1, 1, 0], [-1, -1, 1]]
  assert stages_lib.bubble(table) == 0.5 == stages_lib.bubble_theory(3, 2)
  for p, m in [(2, 1), (4, 8), (8, 2)]:
    assert stages_lib.bubble(stages_lib.schedule(p, m)) == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("stages, micro", [(1, 1), (2, 4), (4, 8), (8, 2)])
def test_gpipe_runs_every_block_in_order(stages, micro):
  """Blocks h -> a_i h + b_i (not commuting, so order matters) over 8 blocks: every row of the
  output is the blocks applied in order (a hand-written loop), and so is the gradient."""
  import jax.numpy as jnp
  from pdist.parallel import stages as stages_lib
  rng = np.random.default_rng(0)
  blocks = {"a": rng.normal(size=8).astype(np.float32), "b": rng.normal(size=8).astype(np.float32)}
  x = rng.normal(size=(8 * micro, 3)).astype(np.float32)
  y = jax.jit(lambda w, x: stages_lib.gpipe(lambda p, h: p["a"] * h + p["b"], w, x,
                                            stages, micro))(blocks, x)
  want = x.copy()
  for a, b in zip(blocks["a"], blocks["b"]):
    want = a * want + b
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5)
  # d/dx of sum(y) = prod(a_i) for every entry
  dx = jax.grad(lambda x: stages_lib.gpipe(lambda p, h: p["a"] * h + p["b"], blocks, x,
                                           stages, micro).sum())(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(dx), np.prod(blocks["a"]) * np.ones_like(x), rtol=1e-5)


@pytest.mark.parametrize("model", ["transformer", "mlp"])
def test_the_pipeline_cut_is_the_model(model):
  """pre -> blocks -> post on the stacked parameters is the model's own forward pass, and
  stack / unstack give the parameters back unchanged."""
  from pdist import data, tasks
  from pdist.parallel import stages as stages_lib
  c = _lm(model__layers=4) if model == "transformer" else _mlp(model__hidden=(32, 32, 32))
  task = tasks.build(c, data.load(c.data))
  params = task.init(jax.random.PRNGKey(1))
  cut = stages_lib.parts(task.module)
  stacked = stages_lib.stack(params, cut.blocks)
  for a, b in zip(jax.tree.leaves(params),
                  jax.tree.leaves(stages_lib.unstack(stacked, cut.blocks))):
    assert np.array_equal(a, b)
  x = task.dataset.x_train[:8]
  rest = {k: v for k, v in params.items() if k not in cut.blocks}
  h = cut.pre(rest, x)
  for name in cut.blocks:
    h = cut.block(params[name], h)
  np.testing.assert_allclose(cut.post(rest, h), task.apply(params, x), rtol=1e-6, atol=1e-6)


PIPELINES = {
    "pipeline4_data2": dict(sync__mesh__pipeline=4),
    "pipeline4_tensor2_micro8": dict(sync__mesh__data=1, sync__mesh__tensor=2,
                                     sync__mesh__pipeline=4, sync__microbatches=8),
    "pipeline2_fsdp2_tensor2_zero3": dict(sync__mesh__data=1, sync__mesh__fsdp=2,
                                          sync__mesh__tensor=2, sync__mesh__pipeline=2,
                                          sync__zero=3, sync__microbatches=4),
    "pipeline4_data2_accumulate2_remat": dict(sync__mesh__pipeline=4, optim__accumulate_steps=2,
                                              model__remat="block"),
}
DEEP = (64, 64, 64, 64, 64)   # Dense_1..Dense_4: four identical blocks


@pytest.fixture(scope="module")
def single_deep_mlp():
  return train.run(_mlp("single", model__hidden=DEEP))


@pytest.mark.parametrize("name", [n if n in ("pipeline4_data2", "pipeline2_fsdp2_tensor2_zero3")
                                  else pytest.param(n, marks=pytest.mark.long)
                                  for n in sorted(PIPELINES)])
def test_mlp_pipeline_equals_single_device(name, single_deep_mlp):
  got = train.run(_mlp(model__hidden=DEEP, **PIPELINES[name]))
  assert type(got.strategy).__name__ == "Pipelined"
  assert max_diff(single_deep_mlp.params, got.params) < TOL, name
  for a, b in zip(single_deep_mlp.rows, got.rows):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
  p, m = got.summary["pipeline"]["stages"], got.summary["pipeline"]["microbatches"]
  assert got.rows[-1]["pipeline_bubble"] == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.long   # 20 s; the transformer's cut is checked in make test (test_the_pipeline_cut...)
def test_transformer_pipeline_equals_single_device():
  """Rotary positions, tied embeddings (used by the first and the last stage), Megatron's
  tensor split of each block, ZeRO-3 along fsdp, 2 stages of 1 block."""
  ref = train.run(_lm("single", model__layers=2, model__positions="rotary"))
  got = train.run(_lm(model__layers=2, model__positions="rotary", sync__mesh__data=1,
                      sync__mesh__fsdp=2, sync__zero=3, sync__mesh__tensor=2,
                      sync__mesh__pipeline=2, sync__microbatches=4))
  assert max_diff(ref.params, got.params) < TOL
  for a, b in zip(ref.rows, got.rows):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


@pytest.mark.parametrize("fields", [dict(sync__mesh__pipeline=4),
                                    dict(sync__mesh__data=1, sync__mesh__fsdp=2,
                                         sync__mesh__pipeline=4, sync__zero=3)])
def test_a_stage_holds_only_its_blocks_and_talks_to_its_neighbours(fields):
  """Per device: 1/p of each stacked block leaf (the rest of the model as the layout says);
  inside the compiled step's tick loops the only collectives are collective-permutes between
  neighbouring stages: the data / fsdp reduction of the blocks' gradients and ZeRO-3's gather
  of a stage's blocks run once an update, outside the ticks."""
  from pdist import data, strategies, tasks
  c = _mlp(model__hidden=DEEP, **fields)
  task = tasks.build(c, data.load(c.data))
  strategy = strategies.build(c, task)
  state = strategy.init(jax.random.PRNGKey(0))
  blocks = state["params"][layout.STACKED]
  fsdp = strategy.sizes["fsdp"]
  for x in jax.tree.leaves(blocks):
    assert x.addressable_shards[0].data.size == x.size // 4 // fsdp   # 64 splits along fsdp
  idx = jax.device_put(strategy.indices(0, 1), strategy._indices_sharding)
  hlo = strategy._chunk.lower(state, strategy.data, idx, 1, None).compile().as_text()
  in_ticks = layout.collectives(hlo, min_loop_depth=1)
  assert set(in_ticks) == {"collective-permute"}, in_ticks
  assert in_ticks["collective-permute"]["count"] >= 2   # forward and backward
  assert "all-reduce" in layout.collectives(hlo)          # the gradients' reduction, once


def test_a_pipeline_resumes_on_another_pipeline_but_not_without_one(tmp_path):
  from pdist.checkpoint import CheckpointError
  work = str(tmp_path / "run")
  fields = dict(model__hidden=DEEP, checkpoint__every=10)
  train.run(_mlp(steps=10, sync__mesh__pipeline=4, **fields), work)
  last = train.run(_mlp(steps=20, sync__mesh__pipeline=2, sync__microbatches=8, **fields), work)
  assert last.summary["resumed_from"] == 10
  assert max_diff(train.run(_mlp("single", steps=20, model__hidden=DEEP)).params,
                  last.params) < TOL
  with pytest.raises(CheckpointError, match="config.sync.mesh.pipeline"):
    train.run(_mlp(steps=30, **fields), work)
