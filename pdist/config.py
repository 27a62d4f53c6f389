"""Experiment configs: the base schema, loading files with presets, dotted overrides, validation.

Every experiment file under experiments/ defines `get_config(arg=None)` that starts from
`base_config()` and sets the fields it needs. The base config is locked, so a misspelt field fails
where it is written. `load("experiments/mnist1d.py:tiny,cnn", ["--config.optim.learning_rate=0.1"])`
reads such a file the way the command line does.

All user-facing failures raise `ConfigError` with one sentence naming the field and what would be
accepted; `python -m pdist` prints it and exits with status 2.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
from typing import Any, Callable, Iterable, Mapping

import ml_collections


class ConfigError(ValueError):
  """A config file, field or value that pdist cannot use; the message says which and why."""


DATASETS = ("mnist1d", "digits", "teacher", "regression", "quadratic")
MODELS = ("mlp", "cnn1d", "cnn2d", "linear", "none")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup", "warmup_cosine")
STRATEGIES = ("single", "sync", "ps")
CONSISTENCY = ("bsp", "ssp", "async")
PS_PARTITIONS = ("iid", "label", "dirichlet", "shared")
COMPUTE_DISTS = ("constant", "lognormal")
SYNC_BACKENDS = ("shard_map", "pmap")
PARTITIONS = ("iid", "label", "dirichlet")


def base_config() -> ml_collections.ConfigDict:
  """The full schema with defaults; experiments change values, never add fields."""
  c = ml_collections.ConfigDict()
  c.strategy = "single"

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist1d"
  c.data.batch_size = 128
  c.data.num_train = 4000      # mnist1d / teacher: training examples generated
  c.data.num_test = 1000       # mnist1d / teacher: test examples generated
  c.data.dim = 784             # teacher: input dimension; quadratic: size of theta
  c.data.num_classes = 10      # teacher: number of classes
  c.data.parts = 1             # quadratic: theta stored as this many arrays (e.g. one per PS shard)
  c.data.seed = 0              # teacher / regression: seed of the data (mnist1d uses its own)

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.hidden = (256, 256)  # mlp: hidden widths; cnn: channels per conv layer
  c.model.kernel = 5           # cnn: kernel size of the first conv (later ones use 3)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.0       # sgd only; 0 = plain SGD
  c.optim.nesterov = False
  c.optim.weight_decay = 0.0   # adamw only
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 0.0      # global-norm clipping; 0 = off
  c.optim.accumulate_steps = 1  # micro-batches per update (batch_size is split into this many)
  c.optim.base_batch_size = 0   # > 0: linear scaling, lr * batch_size / base_batch_size (Goyal 2017)

  c.sync = ml_collections.ConfigDict()
  c.sync.devices = 0           # devices in the data-parallel mesh; 0 = all visible (all processes)
  c.sync.backend = "shard_map"  # shard_map (jit of jax.shard_map) or pmap

  c.ps = ml_collections.ConfigDict()
  c.ps.workers = 4
  c.ps.shards = 1              # server shards; parameter leaves are split over them by bytes
  c.ps.partition = "iid"       # iid / label / dirichlet: each worker's own part of the data;
                               # shared: worker k takes slice k of one global batch (as sync does)
  c.ps.dirichlet_alpha = 0.5
  c.ps.consistency = "async"   # bsp / ssp / async
  c.ps.backup_workers = 0      # bsp: apply the first workers - backup_workers arrivals per round
  c.ps.max_staleness = 0       # ssp: clock gap bound s >= 1 (required for ssp)
  c.ps.staleness_lr = "none"   # none / inverse: lr / staleness when staleness >= 1
  c.ps.compute_time = ml_collections.ConfigDict()
  c.ps.compute_time.dist = "constant"  # constant / lognormal
  c.ps.compute_time.mean = 1.0
  c.ps.compute_time.spread = 0.0       # lognormal: sigma of log(time)
  c.ps.stragglers = ml_collections.ConfigDict()
  c.ps.stragglers.fraction = 0.0       # share of workers that are slow
  c.ps.stragglers.factor = 1.0         # how many times slower
  c.ps.latency = 0.0           # per message, simulated time units
  c.ps.bandwidth = 0.0         # bytes per time unit per server shard link; 0 = unlimited
  c.ps.failures = ml_collections.ConfigDict()
  c.ps.failures.rate = 0.0             # crashes per worker per time unit (Poisson)
  c.ps.failures.at = ()                # ((time, worker), ...) scripted crashes
  c.ps.failures.restart_delay = 1.0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 0          # updates between checkpoints; 0 = only on preemption
  c.checkpoint.keep = 3           # newest checkpoints kept
  c.checkpoint.async_save = True  # write in the background (orbax async checkpointing)
  c.checkpoint.restart = "resume"  # resume: continue from WORKDIR/checkpoints; fresh: discard them
  c.checkpoint.key_file = ""      # AES-256 key (32 bytes or 64 hex digits): encrypt at rest

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.log_every = 100
  c.train.eval_every = 500     # 0 = evaluate only at the end
  c.train.seed = 0
  c.train.progress = True      # tqdm bar on stderr
  c.train.save_params = False  # write the final parameters to WORKDIR/params.npz
  return c


def tiny(c: ml_collections.ConfigDict, steps: int = 20, log_every: int = 10,
         eval_every: int = 10) -> None:
  """The usual `tiny` preset: a small slice of the data and a few updates (seconds, for tests)."""
  c.data.num_train = 512
  c.data.num_test = 128
  c.train.steps = steps
  c.train.log_every = log_every
  c.train.eval_every = eval_every


def parse_arg(arg: str | None) -> tuple[list[str], dict[str, Any]]:
  """Splits a preset string "tiny,cnn,workers=4" into (["tiny", "cnn"], {"workers": 4})."""
  names, values = [], {}
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    if "=" in part:
      key, raw = part.split("=", 1)
      values[key.strip()] = _parse_value(raw.strip())
    else:
      names.append(part)
  return names, values


def apply_presets(config: ml_collections.ConfigDict, arg: str | None,
                  presets: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
                  experiment: str) -> ml_collections.ConfigDict:
  """Applies named presets in order; "key=value" parts set `config.<key>` (dotted allowed)."""
  names, values = parse_arg(arg)
  for name in names:
    if name not in presets:
      raise ConfigError(f"unknown preset '{name}' for {experiment}; "
                        f"choose from: {', '.join(sorted(presets))}")
    presets[name](config)
  for key, value in values.items():
    set_field(config, key, value)
  return config


def _parse_value(raw: str) -> Any:
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """Sets `config.<dotted>` with the type of the existing field; unknown fields are an error."""
  parts = dotted.split(".")
  node = config
  for i, key in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      prefix = ".".join(["config"] + parts[:i])
      known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
      raise ConfigError(f"unknown config field 'config.{dotted}'; {prefix} has: {known}")
    if i < len(parts) - 1:
      node = node[key]
  key = parts[-1]
  old = node[key]
  if isinstance(old, tuple) and isinstance(value, (int, float)):
    value = (value,)
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if old is not None and isinstance(old, ml_collections.ConfigDict):
    raise ConfigError(f"config.{dotted} is a group, not a field; set one of its fields instead")
  if old is not None and not isinstance(value, type(old)):
    raise ConfigError(f"config.{dotted} must be of type {type(old).__name__}, got {value!r}")
  try:
    node[key] = value
  except (TypeError, AttributeError, KeyError) as e:
    raise ConfigError(f"cannot set config.{dotted} to {value!r}: {e}") from None


def load(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads "path/to/experiment.py[:presets]" and applies "--config.a.b=value" overrides."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file '{path}' does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "pdist_experiment_" + os.path.basename(path)[:-3], path)
  if module_spec is None or module_spec.loader is None:
    raise ConfigError(f"config file '{path}' is not a Python file")
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except ConfigError:
    raise
  except Exception as e:  # a broken experiment file: say which and why, in one line
    raise ConfigError(f"config file '{path}' failed to load: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file '{path}' defines no get_config(arg)")
  try:
    config = module.get_config(arg or None)
  except ConfigError:
    raise
  except Exception as e:  # e.g. a locked field misspelt in the experiment file
    raise ConfigError(f"config file '{path}' get_config({arg!r}) failed: "
                      f"{type(e).__name__}: {e}") from None
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise ConfigError(f"override '{item}' must look like --config.group.field=value")
    dotted, raw = item[len("--config."):].split("=", 1)
    set_field(config, dotted, _parse_value(raw))
  validate(config)
  return config


def _choice(config, dotted: str, allowed: Iterable[str]) -> None:
  value = _get(config, dotted)
  allowed = tuple(allowed)
  if value not in allowed:
    raise ConfigError(f"config.{dotted}='{value}' is not one of: {', '.join(allowed)}")


def _positive(config, dotted: str, allow_zero: bool = False) -> None:
  value = _get(config, dotted)
  bad = value < 0 if allow_zero else value <= 0
  if bad or (isinstance(value, float) and not math.isfinite(value)):
    need = "non-negative" if allow_zero else "positive"
    raise ConfigError(f"config.{dotted} must be {need}, got {value}")


def _get(config, dotted: str) -> Any:
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks names and ranges that the schema's types cannot; raises ConfigError."""
  _choice(config, "strategy", STRATEGIES)
  _choice(config, "data.name", DATASETS)
  _choice(config, "model.name", MODELS)
  _choice(config, "optim.name", OPTIMIZERS)
  _choice(config, "optim.schedule", SCHEDULES)
  if config.data.parts < 1 or config.data.parts > config.data.dim:
    raise ConfigError(f"config.data.parts must be in [1, config.data.dim], got {config.data.parts}")
  for field in ("data.batch_size", "data.num_train", "data.num_test", "data.dim",
                "optim.learning_rate", "train.steps", "train.log_every"):
    _positive(config, field)
  _choice(config, "sync.backend", SYNC_BACKENDS)
  for field in ("optim.accumulate_steps",):
    _positive(config, field)
  for field in ("sync.devices", "optim.base_batch_size"):
    _positive(config, field, allow_zero=True)
  if config.data.batch_size % config.optim.accumulate_steps:
    raise ConfigError(f"config.data.batch_size={config.data.batch_size} is not divisible by "
                      f"config.optim.accumulate_steps={config.optim.accumulate_steps}")
  for field in ("optim.momentum", "optim.weight_decay", "optim.warmup_steps",
                "optim.grad_clip", "train.eval_every"):
    _positive(config, field, allow_zero=True)
  _choice(config, "checkpoint.restart", ("resume", "fresh"))
  _positive(config, "checkpoint.every", allow_zero=True)
  _positive(config, "checkpoint.keep")
  _choice(config, "ps.consistency", CONSISTENCY)
  _choice(config, "ps.partition", PS_PARTITIONS)
  _choice(config, "ps.staleness_lr", ("none", "inverse"))
  _choice(config, "ps.compute_time.dist", COMPUTE_DISTS)
  for field in ("ps.workers", "ps.shards", "ps.compute_time.mean", "ps.dirichlet_alpha",
                "ps.stragglers.factor"):
    _positive(config, field)
  for field in ("ps.backup_workers", "ps.max_staleness", "ps.latency", "ps.bandwidth",
                "ps.compute_time.spread", "ps.stragglers.fraction", "ps.failures.rate",
                "ps.failures.restart_delay"):
    _positive(config, field, allow_zero=True)
  if config.strategy == "ps":
    ps = config.ps
    if ps.stragglers.fraction > 1:
      raise ConfigError(f"config.ps.stragglers.fraction must be in [0, 1], got {ps.stragglers.fraction}")
    if ps.consistency == "ssp" and ps.max_staleness < 1:
      raise ConfigError("config.ps.consistency='ssp' needs config.ps.max_staleness >= 1 "
                        "(the largest clock gap allowed; s = 0 would be bsp)")
    if ps.backup_workers and ps.consistency != "bsp":
      raise ConfigError("config.ps.backup_workers only applies to config.ps.consistency='bsp'")
    if ps.backup_workers >= ps.workers:
      raise ConfigError(f"config.ps.backup_workers={ps.backup_workers} must be below "
                        f"config.ps.workers={ps.workers}")
    for item in ps.failures.at:
      if (not isinstance(item, (tuple, list)) or len(item) != 2 or item[0] < 0
          or not 0 <= int(item[1]) < ps.workers):
        raise ConfigError(f"config.ps.failures.at entries must be (time >= 0, worker in "
                          f"[0, {ps.workers})), got {item!r}")
  if config.data.num_classes < 2:
    raise ConfigError(f"config.data.num_classes must be at least 2, got {config.data.num_classes}")
  if config.optim.momentum >= 1:
    raise ConfigError(f"config.optim.momentum must be below 1, got {config.optim.momentum}")
  if any(h <= 0 for h in config.model.hidden):
    raise ConfigError(f"config.model.hidden must hold positive widths, got {config.model.hidden}")
  if config.data.name == "quadratic" and config.model.name != "none":
    raise ConfigError("config.data.name='quadratic' trains theta directly: set config.model.name='none'")
  if config.data.name != "quadratic" and config.model.name == "none":
    raise ConfigError(f"config.model.name='none' only fits config.data.name='quadratic', "
                      f"not '{config.data.name}'")
  if config.model.name == "cnn1d" and config.data.name not in ("mnist1d", "teacher", "regression"):
    raise ConfigError(f"config.model.name='cnn1d' needs 1-D inputs (mnist1d, teacher, regression), "
                      f"not '{config.data.name}'")
  if config.model.name == "cnn2d" and config.data.name != "digits":
    raise ConfigError(f"config.model.name='cnn2d' needs image inputs (digits), "
                      f"not '{config.data.name}'")
  if config.optim.schedule in ("warmup", "warmup_cosine") and config.optim.warmup_steps == 0:
    raise ConfigError(f"config.optim.schedule='{config.optim.schedule}' needs "
                      "config.optim.warmup_steps > 0")
