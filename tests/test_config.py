"""Bad input gets one clear sentence and a non-zero exit, never a traceback."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import EXPERIMENTS
from pdist import config as config_lib
from pdist.__main__ import main

MNIST = os.path.join(EXPERIMENTS, "mnist1d.py") + ":tiny"


@pytest.mark.parametrize("args, message", [
    (["--config.optim.nonexistent=1"], "unknown config field 'config.optim.nonexistent'"),
    (["--config.nothing.lr=1"], "unknown config field 'config.nothing.lr'"),
    (["--config.optim.learning_rate=-0.1"], "config.optim.learning_rate must be positive, got -0.1"),
    (["--config.optim.learning_rate=fast"], "config.optim.learning_rate must be of type float"),
    (["--config.model.name=resnet"], "config.model.name='resnet' is not one of: mlp, linear, cnn1d, cnn2d, transformer, none"),
    (["--config.data.name=imagenet"], "config.data.name='imagenet' is not one of: mnist1d"),
    (["--config.optim.name=lamb"], "config.optim.name='lamb' is not one of: sgd, adam, adamw"),
    (["--config.data.batch_size=100000"],
     "config.data.batch_size=100000 is larger than the 400 training examples of 'mnist1d'"),
    (["--config.train.steps=0"], "config.train.steps must be positive, got 0"),
    (["--config.train.updates_per_call=-5"],
     "config.train.updates_per_call must be non-negative, got -5"),
    (["--config.optim.momentum=1.5"], "config.optim.momentum must be below 1"),
    (["--config.optim.schedule=warmup"], "needs config.optim.warmup_steps > 0"),
    (["--config.model.name=cnn2d"], "config.model.name='cnn2d' needs image inputs"),
    (["--config.optim=1"], "config.optim is a group, not a field"),
    (["config.optim.learning_rate=1"], "must look like --config.group.field=value"),
])
def test_bad_field_gives_one_clear_line(args, message, tmp_path, capsys):
  code = main(["--config", MNIST, "--workdir", str(tmp_path / "w")] + args)
  err = capsys.readouterr().err
  assert code == 2
  assert message in err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_config_file(tmp_path, capsys):
  code = main(["--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2 and f"config file '{tmp_path / 'nope.py'}' does not exist" in err


def test_unknown_preset(tmp_path, capsys):
  code = main(["--config", os.path.join(EXPERIMENTS, "mnist1d.py") + ":huge", "--workdir",
               str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2 and "unknown preset 'huge' for mnist1d; choose from: cnn, mlp, tiny" in err


def test_broken_experiment_file(tmp_path, capsys):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(arg=None):\n  return 1/0\n")
  code = main(["--config", str(bad), "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert code == 2 and "ZeroDivisionError" in err and "Traceback" not in err
  assert f"config file '{bad}' line 2" in err   # where in the file


@pytest.mark.parametrize("body, message", [
    ("  c.optim.lerning_rate = 0.5\n",
     "line 4 sets 'lerning_rate', which is not a field of the config (did you mean "
     "'learning_rate'?)"),
    ("  c.newgroup = 1\n", "line 4 sets 'newgroup', which is not a field of the config"),
    # a field that moved (config.MOVED) says where it went
    ("  c.ps.latency = 0.05\n",
     "line 4 sets config.ps.latency, which has moved to config.network.latency; set that instead"),
    ("  f = c.federated\n  f.bandwidth = 1e5\n",
     "line 5 sets 'bandwidth', which has moved to config.network.bandwidth; set that instead"),
])
def test_a_misspelt_field_in_an_experiment_file_is_refused(body, message, tmp_path, capsys):
  """The schema is locked: a typo in an experiment file never trains at the default silently."""
  bad = tmp_path / "typo.py"
  bad.write_text("from pdist import config\ndef get_config(arg=None):\n"
                 "  c = config.base_config()\n" + body + "  return c\n")
  code = main(["--config", str(bad), "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert code == 2 and message in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "w").exists()   # nothing was written


def test_get_config_must_return_a_config(tmp_path, capsys):
  bad = tmp_path / "dict.py"
  bad.write_text("def get_config(arg=None):\n  return {'optim': {'learning_rate': 0.5}}\n")
  code = main(["--config", str(bad), "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert code == 2 and "get_config(None) returned dict, not a config" in err, err


def test_diverging_run_stops_with_clear_message(tmp_path, capsys):
  code = main(["--config", MNIST, "--workdir", str(tmp_path / "w"),
               "--config.optim.name=sgd", "--config.optim.learning_rate=1e30",
               "--config.train.progress=False"])
  err = capsys.readouterr().err
  assert code == 3
  assert "training loss became nan" in err or "training loss became inf" in err


def test_preset_values_and_overrides_compose():
  c = config_lib.load(os.path.join(EXPERIMENTS, "mnist1d.py") + ":cnn,tiny,optim.learning_rate=0.5",
                      ["--config.model.hidden=(8,8)", "--config.train.steps=7"])
  assert c.model.name == "cnn1d" and c.optim.learning_rate == 0.5
  assert c.model.hidden == (8, 8) and c.train.steps == 7


def test_moved_partition_field_points_to_its_new_place(tmp_path, capsys):
  code = main(["--config", MNIST, "--workdir", str(tmp_path / "w"), "--config.ps.partition=label"])
  err = capsys.readouterr().err
  assert code == 2 and "config.ps.partition has moved to config.data.partition" in err


@pytest.mark.parametrize("group", ["ps", "federated", "codistill"])
@pytest.mark.parametrize("field", ["latency", "bandwidth"])
def test_moved_network_fields_point_to_config_network(group, field, tmp_path, capsys):
  """The links' latency and bandwidth of ps, federated and codistill are config.network's now
  (pdist/network.py), for every strategy alike; the old names say so in one sentence."""
  code = main(["--config", MNIST, "--workdir", str(tmp_path / "w"), "--config.strategy=" + group,
               f"--config.{group}.{field}=0.5"])
  err = capsys.readouterr().err
  assert code == 2 and (f"config.{group}.{field} has moved to config.network.{field}; set that "
                        "instead") in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert config_lib.MOVED[f"{group}.{field}"] == f"network.{field}"


def test_config_network_is_refused_for_a_strategy_that_does_not_read_it(tmp_path, capsys):
  """`single` reports no simulated time, so a latency set for it would be silently ignored."""
  code = main(["--config", MNIST, "--workdir", str(tmp_path / "w"),
               "--config.network.latency=0.05"])
  err = capsys.readouterr().err
  assert code == 2 and ("config.network.latency=0.05 does not apply to config.strategy='single' "
                        "(read by ") in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  c = config_lib.load(MNIST, ["--config.strategy=ps", "--config.network.latency=0.05",
                              "--config.network.bandwidth=1e5"])   # ps reads both
  assert (c.network.latency, c.network.bandwidth) == (0.05, 1e5)
  for name in ("ps", "federated", "codistill"):
    assert {"network.latency", "network.bandwidth"} <= set(
        config_lib.STRATEGIES.entry(name).reads)


def test_diverged_run_writes_a_summary_that_says_so(tmp_path, capsys):
  workdir = tmp_path / "w"
  code = main(["--config", MNIST, "--workdir", str(workdir), "--config.optim.learning_rate=1e30",
               "--config.train.progress=False", "--config.train.log_every=10"])
  assert code == 3
  summary = json.load(open(workdir / "summary.json"))
  assert summary["status"] == "diverged" and summary["diverged_at"] == 10
  ok = tmp_path / "ok"
  assert main(["--config", MNIST, "--workdir", str(ok), "--config.train.progress=False"]) == 0
  assert json.load(open(ok / "summary.json"))["status"] == "completed"


def test_a_registered_strategy_brings_its_config_group_and_checks(tmp_path):
  """A strategy is one class registered by name: its group joins the schema, its checks run
  only when it is selected, and train.run uses it untouched."""
  import ml_collections
  from pdist import registry, strategies, train
  from pdist.strategies.single import Single

  def defaults():
    group = ml_collections.ConfigDict()
    group.lr_factor = 1.0
    return group

  def validate(config):
    registry.check_positive(config, "halved.lr_factor")

  class Halved(Single):
    """`single` at config.halved.lr_factor times the learning rate."""
    def __init__(self, config, task, pipeline=None):
      config = config.copy_and_resolve_references()
      config.optim.learning_rate *= config.halved.lr_factor
      super().__init__(config, task, pipeline=pipeline)

  registry.STRATEGIES.register("halved", config=defaults, validate=validate)(Halved)
  try:
    c = config_lib.load(MNIST, ["--config.halved.lr_factor=0.5", "--config.train.progress=False",
                                "--config.strategy=halved"])
    assert c.halved.lr_factor == 0.5
    c.strategy = "single"   # not selected: its checks do not run, but its fields must be at default
    with pytest.raises(config_lib.ConfigError, match="config.halved.lr_factor=0.5 is set but "
                       "config.strategy='single' does not read config.halved"):
      config_lib.validate(c)
    c.strategy, c.halved.lr_factor = "halved", -1.0
    with pytest.raises(config_lib.ConfigError, match="config.halved.lr_factor must be positive"):
      config_lib.validate(c)
    c.halved.lr_factor = 0.5
    c.optim.learning_rate = 0.2
    halved = train.run(c)
    assert isinstance(halved.strategy, Halved)
    c.strategy, c.optim.learning_rate, c.halved.lr_factor = "single", 0.1, 1.0
    plain = train.run(c)
    for a, b in zip(jax.tree.leaves(halved.params), jax.tree.leaves(plain.params)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  finally:
    registry.STRATEGIES._entries.pop("halved")
  with pytest.raises(config_lib.ConfigError, match="config.strategy='halved' is not one of: "):
    c.strategy = "halved"
    strategies.build(c, None)


def _other_value(default):
  """A value of the same type as `default` and different from it."""
  if isinstance(default, bool):
    return not default
  if isinstance(default, (int, float)):
    return type(default)(default * 2 + 3)
  if isinstance(default, tuple):
    return default + (7,)
  return str(default) + "_other"


def _unread_cases():
  """(registry field, component, shared field it does not read) over every registry."""
  return [(registry.field, entry.name, field) for registry in config_lib.COMPONENTS
          for entry in registry.entries() for field in registry.shared_fields()
          if field not in entry.reads]


@pytest.mark.parametrize("selector, name, field", _unread_cases())
def test_a_field_the_selected_component_does_not_read_is_refused(selector, name, field):
  """Generic over the registries: every component's unread shared fields must stay at their
  defaults, and the ones it reads may be set."""
  defaults = config_lib.base_config()
  c = config_lib.base_config()
  config_lib.set_field(c, selector[len("config."):], name)
  registry = next(r for r in config_lib.COMPONENTS if r.field == selector)
  registry.check_unread(c, defaults)   # all at their defaults: fine
  config_lib.set_field(c, field, _other_value(config_lib.get(defaults, field)))
  with pytest.raises(config_lib.ConfigError, match=f"config.{field}=.* does not apply to "
                     f"{selector}='{name}'"):
    registry.check_unread(c, defaults)
  readers = [e for e in registry.entries() if field in e.reads]
  assert readers   # someone reads it, and for them the same value passes
  config_lib.set_field(c, selector[len("config."):], readers[0].name)
  registry.check_unread(c, defaults)


def test_every_registry_declares_what_it_reads():
  """The registries whose components read different shared fields say so (a new component that
  forgets `reads` would have its fields refused, which this catches before users do)."""
  kinds = {r.kind: r.shared_fields() for r in config_lib.COMPONENTS}
  assert kinds["model"] == ["model.heads", "model.hidden", "model.kernel", "model.layers",
                            "model.positions", "model.remat", "model.width"]
  assert "optim.momentum" in kinds["optimizer"] and "optim.warmup_steps" in kinds["schedule"]
  assert kinds["partition"] == ["data.dirichlet_alpha"]
  assert len(_unread_cases()) > 60


@pytest.mark.parametrize("group", ["ps", "sync", "federated", "codistill"])
def test_a_group_of_a_strategy_not_selected_is_refused(group, tmp_path, capsys):
  c = config_lib.base_config()
  field, value = next(iter(config_lib._leaves(c[group])))
  args = [f"--config.{group}.{field}={_other_value(value)!r}"]
  code = main(["--config", MNIST, "--workdir", str(tmp_path / "w")] + args)
  err = capsys.readouterr().err
  assert code == 2 and f"config.{group}.{field}=" in err
  assert f"config.strategy='single' does not read config.{group}" in err


def test_codistillation_of_parameter_servers_may_set_config_ps():
  c = config_lib.load(os.path.join(EXPERIMENTS, "codistill.py") + ":tiny,ps",
                      ["--config.ps.workers=3"])
  assert c.strategy == "codistill" and c.ps.workers == 3
  with pytest.raises(config_lib.ConfigError, match="does not read config.ps"):
    config_lib.load(os.path.join(EXPERIMENTS, "codistill.py") + ":tiny", ["--config.ps.workers=3"])
