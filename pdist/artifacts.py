"""A finished run read back from its workdir: its config (config.json) and final parameters
(params.npz, written with --config.train.save_params=true), rebuilt into its task's parameter
tree. Used by distillation (`load_teacher`) and by `python -m pdist.quantize`."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from pdist import config as config_lib
from pdist import data, tasks
from pdist.registry import ConfigError


def load_config(workdir: str):
  """The run's config: the schema's defaults with config.json's values written in."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"'{workdir}' is not a pdist workdir (no config.json)")
  config = config_lib.base_config()
  with open(path) as f:
    _update(config, json.load(f))
  return config


def load_finished(workdir: str, dataset=None):
  """(config, task, params) of the finished run in `workdir`; the task is built on `dataset`
  (default: the run's own data). A run of config.train.seeds = N > 1 saved its N copies stacked
  on a leading axis, and its params come back so (`seed_params` splits them)."""
  config = load_config(workdir)
  path = os.path.join(workdir, "params.npz")
  if not os.path.exists(path):
    raise ConfigError(f"'{workdir}' has no finished parameters (params.npz); train it with "
                      "--config.train.save_params=true")
  task = tasks.build(config, dataset if dataset is not None else data.load(config.data))
  abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  try:
    with np.load(path) as f:
      stored = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {path}: {e}") from None
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  seeds = _seed_count(config)
  lead = (seeds,) if seeds > 1 else ()
  values = []
  for key_path, leaf in leaves:
    key = jax.tree_util.keystr(key_path)
    if key not in stored or stored[key].shape != lead + leaf.shape:
      found = f"of shape {stored[key].shape}" if key in stored else "missing"
      raise ConfigError(f"{path} does not fit the run's own model ({key} {found}, expected "
                        f"{lead + leaf.shape}): the workdir is damaged or from another pdist "
                        "version")
    values.append(jnp.asarray(stored[key], leaf.dtype))
  return config, task, jax.tree_util.tree_unflatten(treedef, values)


def _seed_count(config) -> int:
  return max(1, int(config.train.seeds))


def run_seeds(config) -> list[int]:
  """The seeds of a finished run: [train.seed] for one, train.seed ... + N - 1 for N at once."""
  first = int(config.train.seed)
  return [first + i for i in range(_seed_count(config))]


def seed_params(config, params) -> list[tuple[int, object]]:
  """[(seed, params)] of a finished run's params from `load_finished`: one pair, or with
  config.train.seeds = N > 1 each copy's own tree (its slice of the leading seed axis)."""
  seeds = run_seeds(config)
  if len(seeds) == 1:
    return [(seeds[0], params)]
  return [(seed, jax.tree.map(lambda x, i=i: x[i], params)) for i, seed in enumerate(seeds)]


def load_teacher(config, dataset):
  """The teacher in config.distill.teacher (a tasks.Teacher), checked against the student's data:
  the same dataset (and context length)."""
  workdir = config.distill.teacher
  where = f"config.distill.teacher='{workdir}'"
  try:
    teacher = load_config(workdir)
  except ConfigError:
    raise ConfigError(f"{where} is not a pdist workdir (no config.json)") from None
  if teacher.data.name != config.data.name or (
      teacher.data.name == "numpy_docs" and teacher.data.seq_len != config.data.seq_len):
    raise ConfigError(f"{where} was trained on config.data.name='{teacher.data.name}', not "
                      f"'{config.data.name}': its predictions do not fit this task")
  if dataset.kind not in ("classification", "language"):
    raise ConfigError("config.distill applies to classification and language tasks (soft "
                      f"targets), not '{dataset.kind}'")
  seeds = run_seeds(teacher)
  if len(seeds) > 1:
    raise ConfigError(
        f"{where} trained {len(seeds)} copies at once (config.train.seeds={len(seeds)}, seeds "
        f"{seeds[0]} to {seeds[-1]}) and a teacher is one model: train the copy you want alone "
        f"into another workdir (--config.train.seeds=1 --config.train.seed=S, S one of "
        f"{', '.join(map(str, seeds))}: the same run) and name that one")
  try:
    teacher_config, _, params = load_finished(workdir, dataset)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from None
  return tasks.Teacher(teacher_config, jax.tree.map(np.asarray, params))


def _update(config, values: dict) -> None:
  """Writes JSON values into `config` (fields this pdist does not know are skipped)."""
  for key, value in values.items():
    if key not in config:
      continue
    if isinstance(value, dict):
      _update(config[key], value)
    else:
      config[key] = tuple(value) if isinstance(value, list) else value
