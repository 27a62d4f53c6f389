"""python -m pdist.sweep --config experiments/NAME.py[:presets] --workdir DIR [--config.x=y ...]

Runs every variant that the experiment's `get_hyper(arg)` declares, one after another, each into
DIR/<variant>, then overlays their curves in DIR/curves.png (and DIR/curves_epoch.png when the
runs have data, curves_sim_time.png and curves_bytes_pushed.png for the parameter server; DIR/privacy_utility.png when the runs are differentially private). `get_hyper`
returns a list of (name, {"group.field": value, ...}) pairs; the
command line's overrides apply to every variant and win over the variant's own fields (each such
override is said on stderr; one that would make every variant the same run is refused). Every
variant's config is checked before the first one runs. A variant whose loss becomes non-finite is
recorded as diverged (status and update in sweep.json, marked in the legend) and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pdist import config as config_lib


def variants(spec: str) -> list[tuple[str, dict]]:
  """The experiment's get_hyper(arg) list; a broken file or function is one ConfigError."""
  return list(config_lib.call_experiment(spec, "get_hyper"))


def configs(spec: str, overrides: list[str] = ()) -> list[tuple[str, dict, object]]:
  """(name, the variant's fields, its config) of every variant, the command line's overrides
  applied after the variant's fields; all checked before any runs."""
  cli = {item[len("--config."):].split("=", 1)[0] for item in overrides
         if item.startswith("--config.") and "=" in item}
  out = []
  for name, fields in variants(spec):
    extra = [f"--config.{k}={v!r}" if isinstance(v, str) else f"--config.{k}={v}"
             for k, v in fields.items()]
    config = config_lib.load(spec, extra + list(overrides))
    for key in sorted(set(fields) & cli):
      print(f"pdist.sweep: {name}: the command line's config.{key}="
            f"{config_lib.get(config, key)!r} replaces the variant's {fields[key]!r}",
            file=sys.stderr)
    out.append((name, fields, config))
  if len(out) > 1 and all(c.to_dict() == out[0][2].to_dict() for _, _, c in out):
    raise config_lib.ConfigError(
        f"the command line sets {', '.join('config.' + k for k in sorted(cli))}, which makes "
        f"every variant of {spec} the same run; drop the override or run `python -m pdist`")
  return out


def run_sweep(spec: str, workdir: str, overrides: list[str] = ()) -> list[dict]:
  """Trains each variant; returns their summaries (with a "variant" field)."""
  from pdist import metrics, plots, train
  summaries, dirs, names = [], [], []
  for name, fields, config in configs(spec, overrides):
    print(f"pdist.sweep: {name}: " + ", ".join(f"{k}={v}" for k, v in fields.items()),
          file=sys.stderr)
    out = os.path.join(workdir, name)
    try:
      summary = dict(train.run(config, out).summary, variant=name)
    except train.Diverged as e:
      print(f"pdist.sweep: {name}: diverged: {e}", file=sys.stderr)
      summary = dict(e.summary, variant=name)
      name = f"{name} (diverged at {e.step})"
    summaries.append(summary)
    dirs.append(out)
    names.append(name)
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump(summaries, f, indent=2, sort_keys=True)
  plots.plot_runs(dirs, os.path.join(workdir, "curves.png"), labels=names)
  keys = set().union(*[row.keys() for d in dirs for row in metrics.read(d)])
  for x in ("epoch", "sim_time", "bytes_pushed"):
    if x in keys:
      plots.plot_runs(dirs, os.path.join(workdir, f"curves_{x}.png"), x=x, labels=names)
  if any("epsilon" in s for s in summaries):  # a privacy sweep: accuracy against the budget
    plots.plot_tradeoff([s for s in summaries if s.get("status") == "completed"],
                        os.path.join(workdir, "privacy_utility.png"))
  return summaries


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m pdist.sweep",
      usage="python -m pdist.sweep --config experiments/NAME.py[:presets] --workdir DIR "
            "[--config.group.field=value ...]",
      description="Runs every variant of an experiment's get_hyper() into DIR/<variant> and "
                  "overlays their curves in DIR/curves*.png; writes DIR/sweep.json.")
  parser.add_argument("--config", required=True, help="experiment file with get_hyper(arg)")
  parser.add_argument("--workdir", required=True, help="directory for the variants' workdirs")
  args, overrides = parser.parse_known_args(argv)
  try:
    summaries = run_sweep(args.config, args.workdir, overrides)
  except config_lib.ConfigError as e:
    print(f"pdist.sweep: error: {e}", file=sys.stderr)
    return 2
  for s in summaries:
    print(json.dumps({k: s[k] for k in ("variant", "status", "step", "diverged_at", "loss",
                                        "eval_loss", "eval_accuracy") if k in s}))
  print(f"pdist.sweep: curves in {os.path.join(args.workdir, 'curves.png')}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
