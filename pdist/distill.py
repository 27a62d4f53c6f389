"""Knowledge distillation (Hinton et al. 2015): train a student on a mix of the labels and a
finished teacher's softened predictions.

    --config.distill.teacher=runs/teacher --config.distill.temperature=4 --config.distill.weight=0.7

The teacher is a finished pdist workdir: its config.json (the model) and its params.npz (written
by `--config.train.save_params=true`). Per example,

    loss = (1 - weight) CE(labels, z_s) + weight T^2 KL(softmax(z_t / T) || softmax(z_s / T))

with z_s, z_t the student's and teacher's logits (for a language model: per position, averaged
over the sequence). The T^2 keeps the soft term's gradient on the scale of the hard one's
(its gradient in z_s is T (softmax(z_s / T) - softmax(z_t / T))). Evaluation stays plain
cross-entropy on the held-out labels. The teacher runs inside the student's compiled step, on the
same batch, so every strategy distils unchanged.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from pdist.registry import ConfigError, check_unused_at_default


def distill_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.teacher = ""          # a finished pdist workdir with params.npz; "" = no distillation
  c.temperature = 2.0     # T: both distributions are softened by it
  c.weight = 0.5          # share of the soft (teacher) term in the loss
  return c


def validate(config) -> None:
  d = config.distill
  if not d.teacher:
    check_unused_at_default(config, "distill", distill_config(), "teacher",
                            "set config.distill.teacher to a finished workdir")
    return
  if not d.temperature > 0:
    raise ConfigError(f"config.distill.temperature must be positive, got {d.temperature}")
  if not 0 <= d.weight <= 1:
    raise ConfigError(f"config.distill.weight must be in [0, 1], got {d.weight}")


def soft_loss(student_logits, teacher_logits, temperature: float):
  """T^2 KL(softmax(z_t / T) || softmax(z_s / T)) over the last axis (per example / position)."""
  t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def load_teacher(config, dataset):
  """(apply_fn, params) of the teacher in config.distill.teacher, checked against the student's
  data: the same dataset and the same number of outputs."""
  from pdist import config as config_lib
  from pdist import tasks
  workdir = config.distill.teacher
  config_path = os.path.join(workdir, "config.json")
  params_path = os.path.join(workdir, "params.npz")
  if not os.path.exists(config_path):
    raise ConfigError(f"config.distill.teacher='{workdir}' is not a pdist workdir (no "
                      "config.json)")
  if not os.path.exists(params_path):
    raise ConfigError(f"config.distill.teacher='{workdir}' has no finished parameters "
                      "(params.npz); train the teacher with --config.train.save_params=true")
  with open(config_path) as f:
    teacher = config_lib.base_config()
    _update(teacher, json.load(f))
  if teacher.data.name != config.data.name or (
      teacher.data.name == "numpy_docs" and teacher.data.seq_len != config.data.seq_len):
    raise ConfigError(f"config.distill.teacher='{workdir}' was trained on "
                      f"config.data.name='{teacher.data.name}', not '{config.data.name}': its "
                      "predictions do not fit this task")
  if dataset.kind not in ("classification", "language"):
    raise ConfigError("config.distill applies to classification and language tasks (soft "
                      f"targets), not '{dataset.kind}'")
  task = tasks.build(teacher, dataset)
  abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  stored = _load(params_path)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  values = []
  for path, leaf in leaves:
    key = jax.tree_util.keystr(path)
    if key not in stored or stored[key].shape != leaf.shape:
      raise ConfigError(f"config.distill.teacher='{workdir}': its params.npz does not fit its "
                        f"own model ({key} missing or of another shape); the workdir is damaged "
                        "or from another pdist version")
    values.append(jnp.asarray(stored[key], leaf.dtype))
  return task.apply, jax.tree_util.tree_unflatten(treedef, values)


def _load(path: str) -> dict:
  import numpy as np
  try:
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read the teacher's parameters {path}: {e}") from None


def _update(config, values: dict, prefix: str = "") -> None:
  """Writes the JSON config's values into `config` (fields this pdist does not know: ignored)."""
  for key, value in values.items():
    if key not in config:
      continue
    if isinstance(value, dict):
      _update(config[key], value, f"{prefix}{key}.")
    else:
      config[key] = tuple(value) if isinstance(value, list) else value
