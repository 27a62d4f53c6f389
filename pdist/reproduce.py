"""python -m pdist.reproduce [--tiny] [--only NAME ...] [--workdir DIR] [--markdown PATH]

Runs every paper reproduction under experiments/papers/ and prints, per claim, the published
claim, pdist's measured mean +/- std over seeds and whether it falls in the stated range. Each
file there names the paper and the result (PAPER), its claims with an expected range (CLAIMS:
name, claim, metric, low, high, and `published`: the paper's own number) and `run(workdir, tiny,
train, config_lib, root)`, which returns the per-seed values of each claim and draws
DIR/<name>/figure.png (DIR/<name> is cleared first: every paper runs afresh). Writes
DIR/reproduce.json and DIR/REPRODUCTIONS.md (linking the figures in DIR); exits 0 when every
claim holds, 1 otherwise. `--markdown PATH` also writes the report to PATH with its figures
copied to docs/reproductions/ beside it (`make reproduce`: the repository's REPRODUCTIONS.md);
with `--only`, the named papers' sections replace theirs in PATH and the others are kept.
`--tiny` runs each in seconds (a check of the machinery; its numbers are not the claims') and
never writes `--markdown`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import itertools
import json
import math
import os
import platform
import shutil
import sys
import textwrap
import time

from pdist import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPERS = os.path.join(ROOT, "experiments", "papers")
CPU_DEVICES = 8   # the replica strategies' papers run 8 replicas, one a device
CLAIM_KEYS = ("name", "claim", "metric", "low", "high")   # and `published`, the paper's number
FIGURES = os.path.join("docs", "reproductions")   # beside a --markdown file


def verdict(values: list[float], low: float, high: float) -> dict:
  """mean, std over seeds, and whether the mean lies in [low, high]."""
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
  return {"mean": mean, "std": std, "seeds": n, "values": list(values),
          "passed": bool(low <= mean <= high)}


def paper_names() -> list[str]:
  return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(PAPERS, "*.py")))


def machine() -> str:
  return f"{platform.platform()}, {os.cpu_count()} cores"


def reproduce(workdir: str, tiny: bool = False, only: list[str] | None = None,
              log=print, papers: list[dict] | None = None) -> list[dict]:
  """Runs the papers; returns one row per claim. `papers`, when given, receives one dict per
  paper: name, PAPER, the command, minutes, date, machine, and its figure's path (None if run()
  drew none)."""
  from pdist import train
  rows = []
  for name in paper_names():
    if only and name not in only:
      continue
    module, _ = config_lib.load_experiment(os.path.join(PAPERS, f"{name}.py"))
    log(f"pdist.reproduce: {name}: {module.PAPER}")
    paper_dir = os.path.join(workdir, name)
    if os.path.isdir(paper_dir):   # fresh runs: a finished run there would be reused, not timed
      shutil.rmtree(paper_dir)
    started = time.perf_counter()
    measured = module.run(paper_dir, tiny, train, config_lib, ROOT)
    minutes = (time.perf_counter() - started) / 60
    figure = os.path.join(paper_dir, "figure.png")
    if papers is not None:
      papers.append({"paper": name, "title": module.PAPER, "minutes": minutes, "tiny": tiny,
                     "command": f"python -m pdist.reproduce --only {name}" + (
                         " --tiny" if tiny else ""),
                     "date": datetime.date.today().isoformat(), "machine": machine(),
                     "figure": figure if os.path.exists(figure) else None})
    log(f"pdist.reproduce: {name}: {minutes:.1f} minutes")
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


def _cell(text) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _range(low: float, high: float) -> str:
  if math.isinf(high):
    return f">= {low:g}"
  if math.isinf(low):
    return f"<= {high:g}"
  return f"[{low:g}, {high:g}]"


def markdown(papers: list[dict], rows: list[dict], figure_link, tiny: bool = False) -> str:
  """REPRODUCTIONS.md: a header (date, machine, minutes), a summary line per paper, then per
  paper its command, minutes, figure and a table of claims. `figure_link(paper)` is the figure's
  path relative to the markdown file (or None)."""
  claims = {p["paper"]: [r for r in rows if r["paper"] == p["paper"]] for p in papers}
  passed = sum(r["passed"] for r in rows)
  total = sum(p["minutes"] for p in papers)
  machines = sorted({p["machine"] for p in papers})
  dates = sorted({p["date"] for p in papers})
  out = ["# Paper reproductions", ""]
  if tiny:
    out += ["**`--tiny` run: a check of the machinery; these numbers are not the claims'.**", ""]
  out += [
      "Written by `python -m pdist.reproduce` (`make reproduce`: every file in experiments/papers/"
      ", 3 or more seeds each). Each claim's accepted range comes from the paper; a claim pdist "
      "does not reproduce is listed as failed. The paper files' docstrings give the recipe, "
      "what was scaled to fit this machine, and what was tried.", "",
      f"- date: {datetime.date.today().isoformat()}"
      + (f" (papers run {dates[0]} to {dates[-1]})" if len(dates) > 1 else ""),
      f"- machine: {'; '.join(machines) or machine()}",
      f"- total: {total:.1f} minutes for {len(papers)} papers, {len(rows)} claims: "
      f"{passed} pass, {len(rows) - passed} fail", "",
      "| paper | claims passed | minutes |", "|---|---|---|"]
  for p in papers:
    ok = sum(r["passed"] for r in claims[p["paper"]])
    out.append(f"| [{p['paper']}](#{p['paper']}) | {ok} / {len(claims[p['paper']])} | "
               f"{p['minutes']:.1f} |")
  for p in papers:
    out += ["", f"## {p['paper']}", "", f"{_cell(p['title'])}", "",
            f"`{p['command']}` — {p['minutes']:.1f} minutes ({p['date']}, {p['machine']})", "",
            "| claim | paper's number | accepted | pdist, mean ± std (seeds) | result |",
            "|---|---|---|---|---|"]
    for r in claims[p["paper"]]:
      measured = f"{r['mean']:.4g} ± {r['std']:.2g} ({r['seeds']})"
      out.append(f"| {_cell(r['claim'])} ({_cell(r['metric'])}) | "
                 f"{_cell(r.get('published') or '—')} | {_range(r['low'], r['high'])} | "
                 f"{measured} | {'pass' if r['passed'] else '**fail**'} |")
    link = figure_link(p)
    out += ["", f"![{p['paper']}]({link})" if link else "(no figure)"]
  return "\n".join(out) + "\n"


@contextlib.contextmanager
def _locked(path: str):
  """An exclusive lock for PATH, held in the temporary directory (papers run one at a time by
  several processes merge their sections into one --markdown file)."""
  import fcntl
  import hashlib
  import tempfile
  key = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16]
  with open(os.path.join(tempfile.gettempdir(), f"pdist_reproduce_{key}.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def write_markdown(path: str, papers: list[dict], rows: list[dict], merge: bool) -> None:
  """Writes PATH with its figures in docs/reproductions/<paper>.png beside it, and the rows in
  docs/reproductions/reproductions.json. With `merge`, the papers already there that were not
  run now (and still exist) are kept."""
  base = os.path.dirname(os.path.abspath(path))
  figures = os.path.join(base, FIGURES)
  os.makedirs(figures, exist_ok=True)
  store = os.path.join(figures, "reproductions.json")
  with _locked(store):
    ran = {p["paper"] for p in papers}
    existing = paper_names()
    old = {"papers": [], "rows": []}
    if merge and os.path.exists(store):
      with open(store) as f:
        old = json.load(f)
    keep = ({p["paper"] for p in old["papers"]} - ran) & set(existing)
    papers = [p for p in old["papers"] if p["paper"] in keep] + [dict(p) for p in papers]
    papers.sort(key=lambda p: p["paper"])
    rows = [r for r in old["rows"] if r["paper"] in keep] + rows
    order = {p["paper"]: i for i, p in enumerate(papers)}
    rows.sort(key=lambda r: order[r["paper"]])   # stable: claims keep their order
    for p in papers:
      if p["paper"] in ran:
        target = os.path.join(figures, f"{p['paper']}.png")
        if p["figure"]:
          shutil.copyfile(p["figure"], target)
          p["figure"] = os.path.join(FIGURES, f"{p['paper']}.png")
        elif os.path.exists(target):
          os.remove(target)
    for name in os.listdir(figures):   # figures of papers no longer listed
      if name.endswith(".png") and name[:-4] not in order:
        os.remove(os.path.join(figures, name))
    with open(store + ".tmp", "w") as f:
      json.dump({"papers": papers, "rows": rows}, f, indent=2)
    os.replace(store + ".tmp", store)
    with open(path + ".tmp", "w") as f:
      f.write(markdown(papers, rows, lambda p: p["figure"]))
    os.replace(path + ".tmp", path)


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
  parser.add_argument("--markdown", default=None, metavar="PATH",
                      help="also write the report here, figures in docs/reproductions/ beside it "
                      "(make reproduce: REPRODUCTIONS.md); not with --tiny")
  args = parser.parse_args(argv)
  if args.tiny and args.markdown:
    print("pdist.reproduce: error: --tiny numbers are not the claims'; its report goes to "
          f"{os.path.join(args.workdir, 'REPRODUCTIONS.md')} only (drop --markdown)",
          file=sys.stderr)
    return 2
  _cpu_devices(CPU_DEVICES)
  known = paper_names()
  unknown = sorted(set(args.only or ()) - set(known))
  if unknown:
    print(f"pdist.reproduce: error: no reproduction named {', '.join(unknown)}; choose from: "
          f"{', '.join(known)}", file=sys.stderr)
    return 2
  papers: list[dict] = []
  try:
    rows = reproduce(args.workdir, args.tiny, args.only,
                     log=lambda msg: print(msg, file=sys.stderr), papers=papers)
  except config_lib.ConfigError as e:
    print(f"pdist.reproduce: error: {e}", file=sys.stderr)
    return 2
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "reproduce.json"), "w") as f:
    json.dump(rows, f, indent=2)
  workdir = os.path.abspath(args.workdir)
  with open(os.path.join(args.workdir, "REPRODUCTIONS.md"), "w") as f:
    f.write(markdown(papers, rows, tiny=args.tiny, figure_link=lambda p: p["figure"] and (
        os.path.relpath(os.path.abspath(p["figure"]), workdir))))
  if args.markdown:
    write_markdown(args.markdown, papers, rows, merge=bool(args.only))
  print(table(rows))
  total = sum(p["minutes"] for p in papers)
  print(f"pdist.reproduce: {len(papers)} papers in {total:.1f} minutes; report: "
        f"{os.path.join(args.workdir, 'REPRODUCTIONS.md')}"
        + (f" and {args.markdown}" if args.markdown else ""), file=sys.stderr)
  return 0 if all(r["passed"] for r in rows) or args.tiny else 1


if __name__ == "__main__":
  sys.exit(main())


def claims_figure(values: dict, claims: list[dict], path: str, title: str) -> None:
  """A figure of per-seed claim values: one panel per claim, each seed a point, the accepted
  range shaded (its finite part): for papers whose runs draw nothing of their own."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(claims), figsize=(3.4 * len(claims), 3.2), squeeze=False)
  for ax, claim in zip(axes[0], claims):
    v = [float(x) for x in values[claim["name"]]]
    lo, hi = claim["low"], claim["high"]
    top = hi if math.isfinite(hi) else max(v + [lo]) * 1.5 + 1e-12
    bottom = lo if math.isfinite(lo) else min(v + [hi]) - abs(min(v + [hi])) * 0.5
    ax.axhspan(bottom, top, color="C2", alpha=0.15, label="accepted range")
    ax.plot(range(1, len(v) + 1), v, "o", color="C0", label="pdist, per seed")
    ax.set_xticks(range(1, len(v) + 1))
    ax.set_xlabel("seed")
    ax.set_title("\n".join(textwrap.wrap(claim["metric"], 34)), fontsize=9)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8, loc="best")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run_variants(train, config_lib, spec: str, variants, seeds: int, workdir: str,
                 fields: list, curve: tuple[str, str]) -> tuple[dict, dict]:
  """Trains each (name, its fields) of `variants` once per seed on the experiment `spec` (plus
  `fields` and the seed; no progress bar or TensorBoard), in workdir/<name>_<seed>. Returns
  ({name: [summary per seed]}, {name: [[(x, y) of each row holding y] per seed]}), with
  curve = (x, y) row keys: the loop the compression papers share."""
  summaries = {name: [] for name, _ in variants}
  curves = {name: [] for name, _ in variants}
  x, y = curve
  for seed in range(seeds):
    for name, extra in variants:
      config = config_lib.load(spec, list(extra) + list(fields) + [
          f"--config.train.seed={seed}", "--config.train.progress=False",
          "--config.train.tensorboard=False"])
      result = train.run(config, os.path.join(workdir, f"{name}_{seed}"))
      summaries[name].append(result.summary)
      curves[name].append([(r[x], r[y]) for r in result.rows if y in r])
  return summaries, curves
