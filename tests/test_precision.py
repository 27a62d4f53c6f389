"""Low precision: bfloat16 mixed precision, int8 weight quantisation, quantisation-aware training."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_experiment
from pdist import data, quantize, tasks, train


def _config(**model):
  c = load_experiment("mnist1d", "tiny")
  c.train.progress, c.train.tensorboard, c.train.save_params = False, False, True
  c.model.hidden = (32, 32)
  for k, v in model.items():
    c.model[k] = v
  return c


def test_int8_round_trip_error_is_at_most_half_a_step():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(40, 7)) * rng.uniform(0.01, 5, size=7), jnp.float32)
  w = w.at[:, 3].set(0.0)                                 # an all-zero channel
  q, scale = quantize.quantize(w)
  assert q.dtype == jnp.int8 and scale.shape == (1, 7)
  err = np.abs(np.asarray(quantize.dequantize(q, scale) - w))
  assert np.all(err <= np.asarray(scale) / 2 * (1 + 1e-6))
  assert np.all(np.abs(np.asarray(q)).max(axis=0)[[0, 1, 2, 4, 5, 6]] == 127)  # range used


def test_fewer_bits_use_the_symmetric_grid_by_hand():
  """4 bits: levels -7..7, a channel's scale max|w| / 7 (one column worked by hand)."""
  w = jnp.asarray([[1.4, 0.0], [-0.5, 3.0], [0.2, -1.0]], jnp.float32)
  q, scale = quantize.quantize(w, bits=4)
  np.testing.assert_allclose(np.asarray(scale), [[0.2, 3.0 / 7]], rtol=1e-6)
  assert np.asarray(q)[:, 0].tolist() == [7, -2, 1]      # 1.4 / 0.2, round(-2.5) = -2, 0.2 / 0.2
  assert np.asarray(q)[:, 1].tolist() == [0, 7, -2]      # round(-1.0 * 7 / 3) = -2
  with pytest.raises(ValueError, match="2..8"):
    quantize.quantize(w, bits=9)


def test_qat_bits_without_qat_is_refused():
  from pdist import config as config_lib
  from pdist.registry import ConfigError
  with pytest.raises(ConfigError, match="config.model.qat is false"):
    config_lib.validate(_config(qat_bits=4))


def test_qat_gradient_is_the_plain_gradient_at_the_quantised_weights():
  dataset = data.load(_config().data)
  task_q, task = tasks.build(_config(qat=True), dataset), tasks.build(_config(), dataset)
  params = task.init(jax.random.PRNGKey(0))
  batch = {"x": jnp.asarray(task.dataset.x_train[:32]), "y": jnp.asarray(task.dataset.y_train[:32])}
  g_qat = jax.jit(jax.grad(lambda p: task_q.loss(p, batch, None)[0]))(params)
  rounded = jax.tree.map(lambda w: quantize.dequantize(*quantize.quantize(w))
                         if quantize.quantizable(w) else w, params)
  g_plain = jax.jit(jax.grad(lambda p: task.loss(p, batch, None)[0]))(rounded)
  for a, b in zip(jax.tree.leaves(g_qat), jax.tree.leaves(g_plain)):
    assert np.allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("bits", [8, 4])
def test_qat_run_evaluates_as_its_export(tmp_path, capsys, bits):
  """A QAT run's own evaluation (fake-quantised forward pass) is its export's at the run's bit
  width (the default of `pdist.quantize` for a QAT run); at 4 bits the stored values use -7..7."""
  workdir = str(tmp_path / "qat")
  result = train.run(_config(qat=True, qat_bits=bits), workdir)
  assert quantize.main([workdir]) == 0
  with open(os.path.join(workdir, "quantized.json")) as f:
    report = json.load(f)
  assert report["bits"] == bits
  assert report["int8"]["eval_accuracy"] == pytest.approx(result.summary["eval_accuracy"],
                                                          abs=1e-9)
  assert 3.0 < report["size_reduction"] < 4.0
  assert ("int8 weights" if bits == 8 else "4-bit weights") in capsys.readouterr().out
  with np.load(os.path.join(workdir, "params_int8.npz")) as stored:
    top = max(int(np.abs(stored[k]).max()) for k in stored.files if k.endswith(":int8"))
    assert top == 2 ** (bits - 1) - 1
  if bits == 4:
    return
  with np.load(os.path.join(workdir, "params_int8.npz")) as stored:
    assert any(k.endswith(":int8") and stored[k].dtype == np.int8 for k in stored.files)


def _int8_within_half_a_step(workdir, seeds=1):
  """params_int8.npz holds, for every weight of params.npz with two or more axes (besides the
  seed axis of a run of several seeds), int8 values of its shape and scales, which give it back
  to within half a step; returns how many."""
  params = train.load_params(os.path.join(workdir, "params.npz"))
  with np.load(os.path.join(workdir, "params_int8.npz")) as stored:
    names = {k.rsplit(":", 1)[0] for k in stored.files}
    weights = {k for k, w in params.items() if w.ndim >= 2 + (seeds > 1)}
    assert names <= set(params) and weights <= names
    for name in names:
      values, scale, w = stored[f"{name}:int8"], stored[f"{name}:scale"], params[name]
      assert values.dtype == np.int8 and values.shape == w.shape
      assert np.all(np.abs(values * scale - w) <= scale / 2 * (1 + 1e-6)), name
  return len(names)


def test_quantize_a_run_of_several_seeds_reports_each_seed(tmp_path, capsys):
  """train.seeds=3 saves its copies stacked on a leading axis: each is quantised on its own, its
  float32 figures are the run's own final evaluation of that seed, and seed 1's are those of the
  run with seed 1 alone."""
  many, alone = str(tmp_path / "seeds"), str(tmp_path / "seed1")
  c = _config()
  c.train.seeds = 3
  result = train.run(c, many)
  one = _config()
  one.train.seed = 1
  train.run(one, alone)
  assert quantize.main([many]) == 0 and quantize.main([alone]) == 0
  out = capsys.readouterr().out
  with open(os.path.join(many, "quantized.json")) as f:
    report = json.load(f)
  with open(os.path.join(alone, "quantized.json")) as f:
    single = json.load(f)
  assert [s["seed"] for s in report["seeds"]] == [0, 1, 2]
  for key in ("eval_accuracy", "eval_loss"):
    assert [s["float32"][key] for s in report["seeds"]] == pytest.approx(
        result.summary[f"{key}_seeds"], rel=1e-6)
    for part in ("float32", "int8"):
      assert report["seeds"][1][part][key] == pytest.approx(single[part][key], rel=1e-4, abs=1e-9)
      assert report[part][key] == pytest.approx(np.mean([s[part][key] for s in report["seeds"]]))
  assert all(f"seed {s}: eval_accuracy" in out for s in (0, 1, 2))
  assert _int8_within_half_a_step(many, seeds=3) == _int8_within_half_a_step(alone) == 3


def test_quantize_without_params_is_one_clear_line(tmp_path, capsys):
  c = _config()
  c.train.save_params = False
  train.run(c, str(tmp_path / "run"))
  capsys.readouterr()
  assert quantize.main([str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err
  assert "has no finished parameters (params.npz)" in err and len(err.strip().splitlines()) == 1


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state():
  c = _config(dtype="bfloat16")
  task = tasks.build(c, data.load(c.data))
  f32 = tasks.build(_config(), data.load(c.data))
  params = task.init(jax.random.PRNGKey(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  x = jnp.asarray(task.dataset.x_train[:64])
  logits, ref = task.apply(params, x), f32.apply(params, x)
  assert logits.dtype == jnp.float32
  assert 0 < float(jnp.max(jnp.abs(logits - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))
  result = train.run(c)
  floats = [p for p in jax.tree.leaves(result.state["opt_state"])
            if jnp.issubdtype(p.dtype, jnp.floating)]
  assert floats and all(p.dtype == jnp.float32 for p in floats)   # Adam's moments in float32
