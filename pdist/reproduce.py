"""python -m pdist.reproduce [--tiny] [--only NAME ...] [--workdir DIR]

Runs every paper reproduction under experiments/papers/ and prints, per claim, the published
claim, pdist's measured mean +/- std over seeds and whether it falls in the stated range. Each
file there names the paper and the result (PAPER), its claims with an expected range (CLAIMS:
name, claim, metric, low, high) and `run(workdir, tiny, train, config_lib, root)`, which returns
the per-seed values of each claim. Writes DIR/reproduce.json; exits 0 when every claim holds, 1
otherwise. `--tiny` runs each in seconds (a check of the machinery; its numbers are not the
claims').
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import os
import sys
import textwrap

from pdist import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPERS = os.path.join(ROOT, "experiments", "papers")
CPU_DEVICES = 8   # the replica strategies' papers run 8 replicas, one a device


def verdict(values: list[float], low: float, high: float) -> dict:
  """mean, std over seeds, and whether the mean lies in [low, high]."""
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
  return {"mean": mean, "std": std, "seeds": n, "values": list(values),
          "passed": bool(low <= mean <= high)}


def reproduce(workdir: str, tiny: bool = False, only: list[str] | None = None,
              log=print) -> list[dict]:
  from pdist import train
  rows = []
  for path in sorted(glob.glob(os.path.join(PAPERS, "*.py"))):
    name = os.path.basename(path)[:-3]
    if only and name not in only:
      continue
    module, _ = config_lib.load_experiment(path)
    log(f"pdist.reproduce: {name}: {module.PAPER}")
    measured = module.run(os.path.join(workdir, name), tiny, train, config_lib, ROOT)
    for claim in module.CLAIMS:
      rows.append({"paper": name, **claim,
                   **verdict(measured[claim["name"]], claim["low"], claim["high"])})
  return rows


def table(rows: list[dict]) -> str:
  lines = [f"{'paper':28s} {'claim':66s} {'expected':>18s} {'measured (mean ± std)':>26s}  result"]
  for r in rows:
    expected = f"[{r['low']:g}, {r['high']:g}]"
    measured = f"{r['mean']:.4g} ± {r['std']:.2g} (n={r['seeds']})"
    # long names and claims wrap onto following lines (never cut mid-word)
    papers = textwrap.wrap(r["paper"], 28, break_on_hyphens=False) or [""]
    claims = textwrap.wrap(r["claim"], 66, break_on_hyphens=False) or [""]
    lines.append(f"{papers[0]:28s} {claims[0]:66s} {expected:>18s} {measured:>26s}  "
                 f"{'pass' if r['passed'] else 'FAIL'}")
    for paper, claim in itertools.zip_longest(papers[1:], claims[1:], fillvalue=""):
      lines.append(f"{paper:28s} {claim}".rstrip())
  return "\n".join(lines)


def _cpu_devices(n: int) -> None:
  """Gives this process n CPU devices, unless its device count was already chosen.

  The reproductions of the replica strategies (`local`, `gossip`: one replica per device) need
  several devices, and `python -m pdist.reproduce` is one process that would otherwise get JAX's
  one CPU device. A count forced by XLA_FLAGS (--xla_force_host_platform_device_count, as the
  tests and pdist.launch set it) or by jax_num_cpu_devices (JAX_NUM_CPU_DEVICES) is kept, and so
  is an already started backend (reproduce.main called from a program that has used JAX). The
  setting only shapes the CPU backend: on an accelerator host the runs still use the accelerator.
  """
  if "--xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return
  import jax
  if jax.config.jax_num_cpu_devices >= 0:
    return
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:   # the backend is initialised: its device count can no longer change
    pass


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pdist.reproduce", description=__doc__.split(
      "\n\n")[1].replace("\n", " "))
  parser.add_argument("--workdir", default="runs/reproduce", help="where the runs go")
  parser.add_argument("--tiny", action="store_true", help="seconds-long versions (machinery only)")
  parser.add_argument("--only", nargs="*", default=None, help="paper file names to run")
  args = parser.parse_args(argv)
  _cpu_devices(CPU_DEVICES)
  known = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(PAPERS, "*.py")))
  unknown = sorted(set(args.only or ()) - set(known))
  if unknown:
    print(f"pdist.reproduce: error: no reproduction named {', '.join(unknown)}; choose from: "
          f"{', '.join(known)}", file=sys.stderr)
    return 2
  try:
    rows = reproduce(args.workdir, args.tiny, args.only,
                     log=lambda msg: print(msg, file=sys.stderr))
  except config_lib.ConfigError as e:
    print(f"pdist.reproduce: error: {e}", file=sys.stderr)
    return 2
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "reproduce.json"), "w") as f:
    json.dump(rows, f, indent=2)
  print(table(rows))
  return 0 if all(r["passed"] for r in rows) or args.tiny else 1


if __name__ == "__main__":
  sys.exit(main())
