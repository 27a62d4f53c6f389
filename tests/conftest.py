"""Test setup: 8 emulated CPU devices, forced before jax is imported anywhere."""

import os
import sys

# 8 emulated devices; and XLA's backend optimisation off: the tests check numbers, not speed, and
# compiling their hundreds of small programs is most of the suite's time (about a third less
# with it off, measured on this 2-core CPU); subprocesses and Ray workers inherit the flags
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# one persistent compilation cache for the whole session, shared with the subprocesses the
# tests start (it cuts a subprocess run of a tiny config from ~7 s to ~4 s)
import tempfile  # noqa: E402
# (under pytest-xdist the workers of one run share it: each compiles what the other has not)
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN:
  _CACHE = os.path.join(tempfile.gettempdir(), f"pdist_test_jax_cache_{_RUN}")
  os.makedirs(_CACHE, exist_ok=True)
else:
  _CACHE = tempfile.mkdtemp(prefix="pdist_test_jax_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import pytest  # noqa: E402

from pdist import config as config_lib  # noqa: E402

EXPERIMENTS = os.path.join(ROOT, "experiments")


def load_experiment(name: str, arg: str = "tiny", overrides=()):
  """The config of experiments/<name>.py with presets `arg` and '--config.x=y' overrides."""
  return config_lib.load(os.path.join(EXPERIMENTS, f"{name}.py") + (f":{arg}" if arg else ""),
                         overrides)


def quiet_experiment(name: str, preset: str = "tiny", **fields):
  """experiments/<name>.py:<preset> with fields set ("__" for "."), no progress bar or
  TensorBoard files, validated."""
  c = load_experiment(name, preset)
  c.train.progress = False
  c.train.tensorboard = False
  if "strategy" in fields:   # another strategy than the experiment's: its group back at defaults
    switch_strategy(c, fields.pop("strategy"))
  set_fields(c, **fields)
  config_lib.validate(c)
  return c


switch_strategy = config_lib.switch_strategy   # the tests' name for it


def set_fields(config, **fields):
  """Sets dotted fields written with "__" for ".": set_fields(c, ps__workers=4)."""
  for key, value in fields.items():
    config_lib.set_field(config, key.replace("__", "."), value)
  return config


def assert_one_clear_line(spec: str, args, message: str, workdir, capsys) -> None:
  """`python -m pdist --config experiments/<spec> ... args` exits 2 with `message` in one line."""
  from pdist.__main__ import main
  code = main(["--config", os.path.join(EXPERIMENTS, spec), "--workdir", str(workdir)] + list(args))
  err = capsys.readouterr().err
  assert code == 2 and message in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def max_diff(a, b) -> float:
  """Largest absolute difference between two pytrees of arrays."""
  import numpy as np
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: takes more than a few seconds (subprocesses, long runs)")
  config.addinivalue_line(
      "markers", "long: a long run whose code a quicker test also covers; `make test` leaves it "
      "out (to stay under 8 minutes on 2 cores), `make test-all` runs it")


@pytest.fixture(autouse=True, scope="session")
def _eight_devices():
  assert jax.device_count() == 8, "conftest must force 8 CPU devices before jax starts"
  yield


def tensorboard_values(directory):
  """{tag: [(step, value)]} of every summary value in the event files under `directory`, in file
  order (scalars as floats, text as its bytes). Read here, apart from pdist.metrics: the TFRecord
  framing (length, its CRC, the record, its CRC; CRCs not checked) and tensorboardX's protos."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        value = v.simple_value if v.HasField("simple_value") else v.tensor.string_val[0]
        out.setdefault(v.tag, []).append((event.step, value))
  return out


def run_one_and_two_processes(args, tmp_path, devices_per_process: int):
  """Runs `python -m pdist ARGS` once in one process with 2 x devices_per_process devices and
  once as 2 processes x devices_per_process (pdist.launch, gloo on loopback); asserts both exit
  0 and returns their workdirs (one, two)."""
  import subprocess
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  proc = subprocess.run([sys.executable, "-m", "pdist", *args, "--workdir", one,
                         "--local_devices", str(2 * devices_per_process)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = subprocess.run([sys.executable, "-m", "pdist.launch", "--processes", "2",
                         "--devices-per-process", str(devices_per_process), "--timeout", "300",
                         "--", *args, "--workdir", two], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=360)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return one, two
