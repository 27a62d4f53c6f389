"""The Transformer language model on NumPy's documentation: causality, its loss at init, rotary
positions, data-parallel equivalence, the corpus split, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_one_clear_line, max_diff, quiet_experiment
from pdist import data, tasks, train
from pdist.data import text
from pdist.models.transformer import rotary


def _config(preset="tiny", **fields):
  return quiet_experiment("charlm", preset, **fields)


def _task(c):
  return tasks.build(c, data.load(c.data))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_changing_a_later_token_leaves_earlier_logits_alone(positions):
  task = _task(_config(model__positions=positions))
  params = task.init(jax.random.PRNGKey(0))
  x = jnp.asarray(task.dataset.x_train[:2])
  base = task.apply(params, x)
  t = 10
  changed = x.at[:, t + 1].set((x[:, t + 1] + 7) % 256)
  out = task.apply(params, changed)
  assert np.array_equal(np.asarray(out[:, :t + 1]), np.asarray(base[:, :t + 1]))
  assert not np.allclose(np.asarray(out[:, t + 1]), np.asarray(base[:, t + 1]))  # it does matter


def test_loss_at_initialisation_is_log_vocabulary():
  task = _task(_config())
  params = task.init(jax.random.PRNGKey(0))
  batch = {"x": jnp.asarray(task.dataset.x_train[:16]), "y": jnp.asarray(task.dataset.y_train[:16])}
  loss, aux = task.loss(params, batch, None)
  assert abs(float(loss) - math.log(256)) < 0.05
  assert float(aux["bits_per_char"]) == pytest.approx(float(loss) / math.log(2), rel=1e-6)


def test_rotary_scores_depend_only_on_the_offset():
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(1, 16, 1, 8)), jnp.float32) for _ in range(2))
  # the same vectors at every position: the rotated dot product must depend on t - s alone
  q, k = jnp.broadcast_to(q[:, :1], q.shape), jnp.broadcast_to(k[:, :1], k.shape)
  rq, rk = rotary(q)[0, :, 0], rotary(k)[0, :, 0]
  scores = np.asarray(rq @ rk.T)
  for offset in (0, 3, 7):
    diagonal = np.diagonal(scores, offset)
    assert np.allclose(diagonal, diagonal[0], atol=1e-5)
  assert np.allclose(np.linalg.norm(rq, axis=1), np.linalg.norm(q[0, :, 0], axis=1), rtol=1e-5)


def test_one_sync_step_equals_one_single_step():
  plain = dict(train__steps=1, optim__schedule="constant", optim__warmup_steps=0,
               optim__name="sgd", optim__learning_rate=0.5)  # (Adam's first step is sign(g):
  # it turns rounding-level differences of tiny gradients into steps of size lr)
  single = _config(**plain)
  sync = _config(**plain)
  sync.strategy = "sync"
  a, b = train.run(single), train.run(sync)
  assert max_diff(a.params, b.params) < 1e-5
  assert max_diff(a.params, a.strategy.init(jax.random.PRNGKey(0))["params"]) > 1e-4  # it moved


def test_corpus_split_is_fixed_and_disjoint():
  train_tokens, valid = text.split(text.numpy_docs())
  assert len(train_tokens) + len(valid) > 1_000_000
  assert len(valid) == pytest.approx(0.1 * (len(train_tokens) + len(valid)), abs=1)
  ds = data.load(_config().data)
  assert np.array_equal(ds.y_train[0, :-1], ds.x_train[0, 1:])      # y is x shifted by one
  assert ds.y_train[0, -1] == ds.x_train[1, 0]                       # windows tile the text
  assert 4.0 < text.unigram_bits(ds) < 6.0


def test_summary_has_the_baseline_and_a_sample(tmp_path):
  result = train.run(_config(), str(tmp_path / "run"))
  s = result.summary
  assert s["eval_bits_per_char"] == pytest.approx(s["eval_loss"] / math.log(2))
  assert s["eval_perplexity"] == pytest.approx(math.exp(s["eval_loss"]))
  assert 0 < s["unigram_bits_per_char"] < 8 and isinstance(s["sample"], str) and s["sample"]


@pytest.mark.parametrize("preset", ["tiny,ps", "tiny,federated"])
def test_language_model_trains_with_ps_and_federated(preset):
  result = train.run(_config(preset, train__steps=4, train__log_every=2, train__eval_every=4,
                             optim__schedule="constant", optim__warmup_steps=0))
  assert math.isfinite(result.summary["eval_loss"])
  assert result.summary["eval_loss"] < math.log(256)


@pytest.mark.parametrize("args, message", [
    (["--config.data.seq_len=1000000"], "config.data.seq_len=1000000 must be in [2, "),
    (["--config.model.heads=3"], "config.model.heads=3 must divide config.model.width=32"),
    (["--config.data.name=mnist1d", "--config.data.seq_len=128"],
     "config.model.name='transformer' is a language model"),
    (["--config.model.name=mlp"], "config.data.name='numpy_docs' is token data"),
    (["--config.strategy=ps", "--config.data.partition=label"],
     "config.data.partition='label' splits by class label"),
])
def test_bad_language_input_gives_one_clear_line(args, message, tmp_path, capsys):
  assert_one_clear_line("charlm.py:tiny", args, message, tmp_path / "w", capsys)
