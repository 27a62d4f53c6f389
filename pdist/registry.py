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
  only when a config selects this component.
  """
  name: str
  obj: Any
  config: Callable[[], ml_collections.ConfigDict] | None = None
  validate: Callable[[ml_collections.ConfigDict], None] | None = None
  group: str | None = None


class Registry:
  """Names of one kind of component (strategy, dataset, model, ...), chosen by config `field`."""

  def __init__(self, kind: str, field: str):
    self.kind = kind
    self.field = field
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, *, config=None, validate=None, group: str | None = None):
    """Decorator: registers the decorated class or function under `name`."""
    def add(obj):
      if name in self._entries:
        raise ValueError(f"{self.kind} '{name}' is registered twice")
      self._entries[name] = Entry(name, obj, config, validate,
                                  group if group is not None else (name if config else None))
      return obj
    return add

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
