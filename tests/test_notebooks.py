"""Every notebook under notebooks/ executes top to bottom on a real Jupyter kernel."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


# every notebook but the quickstart takes 15-30 s; the code they call
# is tested on its own, and `make test-all` and `make notebooks` execute them
LONG = ("02_parameter_server.ipynb", "03_recovery.ipynb", "04_federated.ipynb",
        "05_compression.ipynb", "06_sharding.ipynb", "07_low_communication.ipynb")


@pytest.mark.slow
@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.long) if os.path.basename(p) in LONG else p
    for p in NOTEBOOKS], ids=os.path.basename)
def test_notebook_executes(path):
  nb = nbformat.read(path, as_version=4)
  env_path, flags = os.environ.get("PYTHONPATH", ""), os.environ.get("XLA_FLAGS", "")
  os.environ["PYTHONPATH"] = ROOT + (os.pathsep + env_path if env_path else "")
  # the kernel compiles as a user's would (conftest turns XLA's optimisation off for the tests'
  # small programs; the notebooks train for hundreds of updates)
  os.environ["XLA_FLAGS"] = " ".join(f for f in flags.split()
                                     if not f.startswith("--xla_backend_optimization_level"))
  try:
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  finally:
    os.environ["PYTHONPATH"], os.environ["XLA_FLAGS"] = env_path, flags
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
             for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
