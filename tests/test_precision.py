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


def test_qat_run_evaluates_as_its_int8_export(tmp_path, capsys):
  workdir = str(tmp_path / "qat")
  result = train.run(_config(qat=True), workdir)
  assert quantize.main([workdir]) == 0
  with open(os.path.join(workdir, "quantized.json")) as f:
    report = json.load(f)
  assert report["int8"]["eval_accuracy"] == pytest.approx(result.summary["eval_accuracy"],
                                                          abs=1e-9)
  assert 3.0 < report["size_reduction"] < 4.0
  assert "int8 weights" in capsys.readouterr().out
  with np.load(os.path.join(workdir, "params_int8.npz")) as stored:
    assert any(k.endswith(":int8") and stored[k].dtype == np.int8 for k in stored.files)


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
