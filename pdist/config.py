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
import os
import re
from typing import Any, Callable, Iterable, Mapping

import ml_collections

# importing the implementations registers them (each module registers its own names)
from pdist import compression, data, distill, models, network, optim, privacy, strategies  # noqa: F401
from pdist.registry import (COMPRESSORS, DATASETS, MODELS, OPTIMIZERS, PARTITIONS, PRIVACY,
                            SCHEDULES, STRATEGIES, ConfigError, check_choice, check_positive,
                            get)

# the registries whose name a config selects, with the field that selects it
COMPONENTS = (STRATEGIES, DATASETS, MODELS, OPTIMIZERS, SCHEDULES, PARTITIONS, PRIVACY,
              COMPRESSORS)


MOVED = {"ps.partition": "data.partition", "ps.dirichlet_alpha": "data.dirichlet_alpha",
         # one network model for every strategy (pdist/network.py)
         "ps.latency": "network.latency", "ps.bandwidth": "network.bandwidth",
         "federated.latency": "network.latency", "federated.bandwidth": "network.bandwidth",
         "codistill.latency": "network.latency", "codistill.bandwidth": "network.bandwidth"}


def base_config() -> ml_collections.ConfigDict:
  """The full schema with defaults; experiments change values, never add fields.

  The shared groups are defined here; each registered component with a config group of its own
  (e.g. `config.sync`, `config.ps`) adds it from its own module.
  """
  c = ml_collections.ConfigDict()
  c.strategy = "single"

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist1d"
  c.data.batch_size = 128      # per update (single, sync); per worker gradient (ps)
  # num_train, num_test, dim, num_classes, parts, seed: read by some datasets only; their
  # defaults and which dataset reads which live with the datasets (data/datasets.py)
  for field, default in data.datasets.DEFAULTS.items():
    c.data[field] = default
  c.data.partition = "iid"     # how the training set is split over workers: iid / label /
                               # contiguous (in the data's order: a stretch of text each) /
                               # dirichlet, or shared (worker k takes slice k of one global batch)
  c.data.dirichlet_alpha = 0.5  # dirichlet: concentration; small = very non-iid

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.hidden = (256, 256)  # mlp: hidden widths; cnn: channels per conv layer
  c.model.kernel = 5           # cnn: kernel size of the first conv (later ones use 3)
  c.model.width = 128          # transformer: model width (embedding size)
  c.model.layers = 2           # transformer: blocks
  c.model.heads = 4            # transformer: attention heads (must divide width)
  c.model.positions = "learned"  # transformer: learned / rotary
  c.model.dtype = "float32"    # float32 / bfloat16 (mixed precision: float32 parameters)
  c.model.remat = "none"        # none / block: jax.checkpoint per transformer block or MLP layer
  c.model.qat = False          # quantisation-aware training: int8 fake-quantised weights (STE)
  c.model.qat_bits = 8         # QAT's weight grid: 2^(bits-1)-1 levels each side (2..8; stored int8)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.0       # sgd only; 0 = plain SGD
  c.optim.nesterov = False
  c.optim.weight_decay = 0.0   # adamw only
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.warmup_from = 0.0    # warmup starts at lr x this (Goyal et al. 2017: 1/k)
  c.optim.decay_steps = ()     # step schedules: updates at which lr is multiplied by decay_factor
  c.optim.decay_factor = 0.1
  c.optim.grad_clip = 0.0      # global-norm clipping; 0 = off
  c.optim.accumulate_steps = 1  # micro-batches per update (batch_size is split into this many)
  c.optim.base_batch_size = 0   # > 0: linear scaling, lr * batch_size / base_batch_size (Goyal 2017)

  for registry in COMPONENTS:
    for entry in registry.entries():
      if entry.config is not None:
        c[entry.group] = entry.config()

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1000       # updates between checkpoints (and one at the end); 0 = only on
                                  # preemption. On by default: a killed run resumes.
  c.checkpoint.keep = 3           # newest checkpoints kept
  c.checkpoint.async_save = True  # write in the background (orbax async checkpointing)
  c.checkpoint.restart = "resume"  # resume: continue from WORKDIR/checkpoints; fresh: discard them
  c.checkpoint.key_file = ""      # AES-256 key (32 bytes or 64 hex digits): encrypt at rest

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.log_every = 100
  # updates one compiled call may cover (whole log rows; rows stay per log_every either way);
  # 0 = decided by how long a call runs on an accelerator (several rows when one takes < 50 ms),
  # one row a call on a CPU host
  c.train.updates_per_call = 0
  c.train.eval_every = 500     # 0 = evaluate only at the end
  c.train.eval_train = False   # also evaluate on the whole training set (train_eval_* fields)
  c.train.seed = 0
  c.train.seeds = 1            # > 1: seeds seed .. seed+N-1 as one vmapped program (single only)
  c.train.progress = True      # tqdm bar on stderr
  c.train.save_params = False  # write the final parameters to WORKDIR/params.npz
  c.train.tensorboard = True   # also write TensorBoard event files to WORKDIR/tensorboard

  # the links of every strategy that reports simulated time (pdist/network.py)
  c.network = network.network_config()
  c.distill = distill.distill_config()  # knowledge distillation from a finished teacher workdir
  # locked: a field that is not in the schema (a typo in an experiment file, an override) is an
  # error where it is written, never a new field that nothing reads
  c.lock()
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


def switch_strategy(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """config.strategy = name, with the previous strategy's own group back at its defaults (a group
  of a strategy that is not selected must be, see validate), and so the shared fields that the
  new one does not read (e.g. config.network for `single`: registry.check_unread); other groups
  are kept. For an experiment's reference preset, e.g. DiLoCo's `sync`."""
  defaults = base_config()
  old = config.strategy
  if old != name and old in defaults:
    config[old] = defaults[old]
  reads = STRATEGIES.entry(name).reads
  for field in STRATEGIES.shared_fields():
    if field not in reads:
      set_field(config, field, get(defaults, field))
  config.strategy = name
  return config


def apply_presets(config: ml_collections.ConfigDict, arg: str | None,
                  presets: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
                  experiment: str) -> ml_collections.ConfigDict:
  """Applies named presets in order, except `tiny`, which goes last wherever it is written (it
  shrinks whatever the others chose, so "tiny,cnn" and "cnn,tiny" are the same run); then
  "key=value" parts set `config.<key>` (dotted allowed)."""
  names, values = parse_arg(arg)
  for name in names:
    if name not in presets:
      raise ConfigError(f"unknown preset '{name}' for {experiment}; "
                        f"choose from: {', '.join(sorted(presets))}")
  for name in sorted(names, key=lambda n: n == "tiny"):   # stable: the others keep their order
    presets[name](config)
  for key, value in values.items():
    set_field(config, key, value)
  return config


def _parse_value(raw: str) -> Any:
  """A Python literal; also true/false (any case) and nan/inf, which are not literals."""
  lowered = raw.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  if lowered in ("nan", "inf", "+inf", "-inf"):
    return float(lowered)
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
      if dotted in MOVED:
        raise ConfigError(f"config.{dotted} has moved to config.{MOVED[dotted]}; set that instead")
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
  if isinstance(value, bool) and old is not None and not isinstance(old, bool):
    raise ConfigError(f"config.{dotted} must be of type {type(old).__name__}, got {value!r}")
  if old is not None and isinstance(old, ml_collections.ConfigDict):
    raise ConfigError(f"config.{dotted} is a group, not a field; set one of its fields instead")
  if old is not None and not isinstance(value, type(old)):
    raise ConfigError(f"config.{dotted} must be of type {type(old).__name__}, got {value!r}")
  try:
    node[key] = value
  except (TypeError, AttributeError, KeyError) as e:
    raise ConfigError(f"cannot set config.{dotted} to {value!r}: {e}") from None


def load_experiment(spec: str):
  """(module, preset argument) of "path/to/experiment.py[:presets]"; a missing or broken file is
  a ConfigError naming it."""
  path, _, arg = spec.partition(":")
  if os.path.isdir(path):
    raise ConfigError(f"config file '{path}' is a directory; name an experiment file in it, "
                      f"e.g. {os.path.join(path, 'mnist1d.py')}")
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
  return module, arg or None


def call_experiment(spec: str, function: str):
  """experiment.<function>(arg) for "path.py[:arg]" (get_config, get_hyper); any failure in it is
  a ConfigError naming the file and the function."""
  module, arg = load_experiment(spec)
  path = spec.partition(":")[0]
  if not hasattr(module, function):
    raise ConfigError(f"config file '{path}' defines no {function}(arg)")
  try:
    result = getattr(module, function)(arg)
  except ConfigError:
    raise
  except Exception as e:  # e.g. a field misspelt in the experiment file (the schema is locked)
    raise ConfigError(_experiment_failure(path, function, arg, e)) from None
  if function == "get_config" and not isinstance(result, ml_collections.ConfigDict):
    raise ConfigError(f"config file '{path}' get_config({arg!r}) returned "
                      f"{type(result).__name__}, not a config: start from "
                      "pdist.config.base_config() and return it")
  return result


def _experiment_failure(path: str, function: str, arg, error: Exception) -> str:
  """One sentence for an exception raised inside an experiment file's function: where in the file
  and why; a field that is not in the locked schema is named with the nearest existing one."""
  import traceback
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  where = f"config file '{path}'" + (f" line {frames[-1].lineno}" if frames else "")
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)) and "cannot be added" in text:
    key = text.split('"')[1] if '"' in text else "?"
    # a field that moved (MOVED): the old name as the line writes it, else every old one of `key`
    old = [o for o in MOVED if o.rsplit(".", 1)[-1] == key]
    source = (frames[-1].line or "") if frames else ""
    old = [o for o in old if re.search(rf"\b{re.escape(o)}\b", source)] or old
    if old:
      said = f"config.{old[0]}" if len(old) == 1 else f"'{key}'"
      new = " or ".join(sorted({f"config.{MOVED[o]}" for o in old}))
      return f"{where} sets {said}, which has moved to {new}; set that instead"
    close = re.search(r'Did you mean "([^"]+)"', text)   # ml_collections' nearest, same group
    hint = f" (did you mean '{close.group(1)}'?)" if close else ""
    return (f"{where} sets '{key}', which is not a field of the config{hint}; the base config "
            "is locked, so experiments change fields and never add them")
  first = text.splitlines()[0] if text.strip() else ""
  return f"{where}: {function}({arg!r}) failed: {type(error).__name__}: {first}"



def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
  """Applies "--config.a.b=value" items (values parsed as Python literals, else strings)."""
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise ConfigError(f"override '{item}' must look like --config.group.field=value")
    dotted, raw = item[len("--config."):].split("=", 1)
    set_field(config, dotted, _parse_value(raw))


def load(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads "path/to/experiment.py[:presets]" and applies "--config.a.b=value" overrides."""
  config = call_experiment(spec, "get_config")
  apply_overrides(config, overrides)
  validate(config)
  return config


def _selected(config):
  """(registry, entry) for every component the config names."""
  for registry in COMPONENTS:
    yield registry, registry.entry(get(config, registry.field[len("config."):]))


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks names and ranges that the schema's types cannot; raises ConfigError.

  The shared groups are checked here; each selected component (strategy, dataset, model, ...)
  then checks its own fields. A component that is not selected is not checked.
  """
  check_positive(config, "data.batch_size", "data.num_train", "data.num_test", "data.dim",
                 "data.dirichlet_alpha", "optim.learning_rate", "optim.accumulate_steps",
                 "train.steps", "train.log_every", "checkpoint.keep")
  check_positive(config, "optim.base_batch_size", "optim.momentum", "optim.weight_decay",
                 "optim.warmup_from",
                 "optim.warmup_steps", "optim.grad_clip", "train.eval_every", "checkpoint.every",
                 "train.updates_per_call", allow_zero=True)
  if config.data.batch_size % config.optim.accumulate_steps:
    raise ConfigError(f"config.data.batch_size={config.data.batch_size} is not divisible by "
                      f"config.optim.accumulate_steps={config.optim.accumulate_steps}")
  if config.checkpoint.restart not in ("resume", "fresh"):
    raise ConfigError(f"config.checkpoint.restart='{config.checkpoint.restart}' is not one of: "
                      "resume, fresh")
  if config.data.num_classes < 2:
    raise ConfigError(f"config.data.num_classes must be at least 2, got {config.data.num_classes}")
  if config.optim.momentum >= 1:
    raise ConfigError(f"config.optim.momentum must be below 1, got {config.optim.momentum}")
  if config.train.seed < 0:
    raise ConfigError(f"config.train.seed must be non-negative, got {config.train.seed}")
  check_positive(config, "train.seeds")
  if config.train.seeds > 1:
    if config.strategy != "single":
      raise ConfigError(f"config.train.seeds={config.train.seeds} runs vmapped copies of "
                        f"config.strategy='single' only, not '{config.strategy}'; run one process "
                        "per seed instead")
    if config.privacy.mechanism != "none" or config.compression.name != "none":
      raise ConfigError(f"config.train.seeds={config.train.seeds} does not combine with "
                        "config.privacy or config.compression; run one process per seed")
  distill.validate(config)
  network.validate_network(config)
  check_choice(config, "model.dtype", models.DTYPES)
  check_choice(config, "model.remat", ("none", "block"))
  if int(config.model.qat_bits) not in range(2, 9):
    raise ConfigError(f"config.model.qat_bits must be 2..8 (weights stored as int8), got "
                      f"{config.model.qat_bits}")
  if int(config.model.qat_bits) != 8 and not config.model.qat:
    raise ConfigError(f"config.model.qat_bits={config.model.qat_bits} sets quantisation-aware "
                      "training's grid, but config.model.qat is false; set "
                      "--config.model.qat=true (post-training quantisation: python -m "
                      "pdist.quantize WORKDIR --bits N)")
  if any(h <= 0 for h in config.model.hidden):
    raise ConfigError(f"config.model.hidden must hold positive widths, got {config.model.hidden}")
  for _, entry in list(_selected(config)):
    if entry.validate is not None:
      entry.validate(config)
  # then what the selected components do not read must be at its defaults (after their own
  # checks, which say more about a combination that cannot work at all)
  defaults = base_config()
  for registry in COMPONENTS:
    registry.check_unread(config, defaults)
  _check_unselected_groups(config, defaults)


def _check_unselected_groups(config, defaults) -> None:
  """The config group of a component that is not selected (and that no selected component
  uses, see registry.Entry.uses) must keep its defaults: `--config.ps.workers=8` with
  config.strategy='single' is refused, not ignored. Groups that hold their own selector
  (config.privacy.mechanism, config.compression.name) check themselves."""
  used = set()
  for _, entry in _selected(config):
    used.update([entry.group] if entry.group else [])
    used.update(entry.uses(config) if entry.uses else ())
  for registry in COMPONENTS:
    selector = registry.field[len("config."):]
    for entry in registry.entries():
      group = entry.group
      if group is None or group in used or selector.startswith(group + "."):
        continue
      for field, value in _leaves(config[group]):
        default = get(defaults[group], field)
        if value != default:
          raise ConfigError(f"config.{group}.{field}={value!r} is set but {registry.field}="
                            f"'{get(config, selector)}' does not read config.{group}; select "
                            f"{registry.field}='{entry.name}' or leave it at {default!r}")


def _leaves(group: ml_collections.ConfigDict, prefix: str = ""):
  """(dotted field, value) of every field of a group, nested groups included."""
  for key, value in group.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value
