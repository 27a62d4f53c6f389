"""Test setup: 8 emulated CPU devices, forced before jax is imported anywhere."""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
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


@pytest.fixture(autouse=True, scope="session")
def _eight_devices():
  assert jax.device_count() == 8, "conftest must force 8 CPU devices before jax starts"
  yield
