"""Registries: a name in a config maps to the module that implements it.

One registry per kind of component. An implementation registers itself where it is defined, with
its own config defaults (a group such as `config.ps`) and its own checks:

    @registry.STRATEGIES.register("ps", config=ps_config, validate=validate_ps)
    class ParameterServerStrategy(base.Strategy): ...

`pdist.config.base_config()` gathers the registered groups into the schema, `pdist.config.validate`
runs the checks of the components a config selects, and the builders look names up here, so an
unknown name is one sentence listing the registered ones. This module imports nothing of pdist:
everything else may import it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

import ml_collections


class ConfigError(ValueError):
  """A config file, field or value that pdist cannot use; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One registered implementation.

  `obj` is what the registry hands out (a class or a function). `config` returns the defaults of
  the component's own config group (named `group`, by default the component's name), or is None.
  `validate(config)` raises ConfigError for values that the schema's types cannot catch; it runs
  only when a config selects this component. `reads` names the shared fields (dotted, e.g.
  "model.hidden") this component reads of those that only some components of its kind read: the
  others must stay at their defaults when it is selected (`check_unread`). `uses(config)` names
  the config groups of *other* components it reads (e.g. codistillation's groups of parameter
  servers read config.ps), which then may be set although their own component is not selected.
  """
  name: str
  obj: Any
  config: Callable[[], ml_collections.ConfigDict] | None = None
  validate: Callable[[ml_collections.ConfigDict], None] | None = None
  group: str | None = None
  reads: tuple[str, ...] = ()
  uses: Callable[[ml_collections.ConfigDict], Iterable[str]] | None = None


class Registry:
  """Names of one kind of component (strategy, dataset, model, ...), chosen by config `field`."""

  def __init__(self, kind: str, field: str):
    self.kind = kind
    self.field = field
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, *, config=None, validate=None, group: str | None = None,
               reads: Iterable[str] = (), uses=None):
    """Decorator: registers the decorated class or function under `name`."""
    def add(obj):
      if name in self._entries:
        raise ValueError(f"{self.kind} '{name}' is registered twice")
      self._entries[name] = Entry(name, obj, config, validate,
                                  group if group is not None else (name if config else None),
                                  tuple(reads), uses)
      return obj
    return add

  def shared_fields(self) -> list[str]:
    """The shared fields that some of this kind's components read and others do not."""
    return sorted({f for e in self._entries.values() for f in e.reads})

  def check_unread(self, config, defaults) -> None:
    """The selected component's unread shared fields (see Entry.reads) must equal `defaults`'
    (the base config): a value set for another component is refused, not silently ignored."""
    name = get(config, self.field[len("config."):])
    entry = self.entry(name)
    for field in self.shared_fields():
      if field in entry.reads:
        continue
      value, default = get(config, field), get(defaults, field)
      if value != default:
        readers = ", ".join(e.name for e in self._entries.values() if field in e.reads)
        raise ConfigError(f"config.{field}={value!r} does not apply to {self.field}='{name}' "
                          f"(read by {readers} only); leave it at {default!r}")

  def names(self) -> list[str]:
    return list(self._entries)

  def entries(self) -> list[Entry]:
    return list(self._entries.values())

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def entry(self, name: str) -> Entry:
    if name not in self._entries:
      raise ConfigError(f"{self.field}='{name}' is not one of: {', '.join(self._entries)}")
    return self._entries[name]

  def get(self, name: str) -> Any:
    """The registered object; an unknown name raises ConfigError listing the registered ones."""
    return self.entry(name).obj


STRATEGIES = Registry("strategy", "config.strategy")
DATASETS = Registry("dataset", "config.data.name")
MODELS = Registry("model", "config.model.name")
OPTIMIZERS = Registry("optimizer", "config.optim.name")
SCHEDULES = Registry("schedule", "config.optim.schedule")
PARTITIONS = Registry("partition", "config.data.partition")
PRIVACY = Registry("privacy mechanism", "config.privacy.mechanism")
COMPRESSORS = Registry("compressor", "config.compression.name")


# -- small checks shared by the components' validate functions --------------------------------------
def get(config, dotted: str) -> Any:
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def check_choice(config, dotted: str, allowed: Iterable[str]) -> None:
  value = get(config, dotted)
  allowed = tuple(allowed)
  if value not in allowed:
    raise ConfigError(f"config.{dotted}='{value}' is not one of: {', '.join(allowed)}")


def check_positive(config, *dotted: str, allow_zero: bool = False) -> None:
  for name in dotted:
    value = get(config, name)
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"config.{name} must be a finite number, got {value}")
    if value < 0 if allow_zero else value <= 0:
      need = "non-negative" if allow_zero else "positive"
      raise ConfigError(f"config.{name} must be {need}, got {value}")


def check_unused_at_default(config, group: str, defaults, selector: str, advice: str) -> None:
  """Fields of config.<group> other than `selector` must keep their `defaults` (a component that
  is off must not be configured silently): one sentence naming the first field set."""
  for field, default in defaults.items():
    if field != selector and config[group][field] != default:
      raise ConfigError(f"config.{group}.{field} is set but config.{group}.{selector}="
                        f"'{config[group][selector]}'; {advice}")
