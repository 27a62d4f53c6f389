"""Figures from metrics files: python -m pdist.plots DIR [DIR ...] [--x step|epoch|sim_time|...]
[--out PNG]

Draws the panels the runs have data for — train and eval loss, train and eval accuracy, and when
present the parameter server's staleness, a private run's epsilon, a compressed run's bytes per
update — with one legend for the figure. One run's figure goes to DIR/curves.png; several runs
need --out (so no run's own figure is overwritten by a comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pdist import metrics

# (metric, panel title, log y axis)
PANELS = (("loss", "train loss", True), ("eval_loss", "eval loss", True),
          ("excess_loss", "excess loss (training set, over the optimum)", True),
          ("accuracy", "train accuracy", False), ("eval_accuracy", "eval accuracy", False),
          ("staleness_mean", "staleness (mean per row)", False),
          ("epsilon", "privacy spent: epsilon", False),
          ("epsilon_if_poisson", "epsilon if Poisson sampled (shuffled batches: no guarantee)",
           False),
          ("bytes_up", "bytes sent per update", True))
X_LABELS = {"step": "updates", "sim_time": "simulated time", "epoch": "epochs",
            "bytes_pushed": "bytes pushed (all workers)", "wall_time": "wall-clock seconds"}


def plain_ticks(axis, log: bool, span: tuple[float, float] | None = None,
                horizontal: bool = False) -> None:
  """Tick labels as plain numbers (0.2, 0.5, 1, 2; 1e+06 for wide ranges), not 2x10^-1; a
  horizontal axis (labels side by side) gets decades only once it spans more than one."""
  import math

  import matplotlib.ticker as ticker
  if log:
    lo, hi = span or (1.0, 10.0)
    decades = math.log10(max(hi, 1e-300) / max(lo, 1e-300)) if lo > 0 else 99
    if horizontal:
      decades *= 3   # labels side by side need about three times the room
    subs = ((1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.7, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
            if decades <= 0.5 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades <= 1.5 else
            (1.0, 2.0, 5.0) if decades <= 4 else (1.0,))
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=16))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs="auto"))
    axis.set_minor_formatter(ticker.NullFormatter())
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def _label(workdir: str) -> str:
  """The run's name, marked when its summary says it diverged."""
  name = os.path.basename(os.path.normpath(workdir))
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return name
  if summary.get("status") == "diverged":
    return f"{name} (diverged at {summary.get('diverged_at')})"
  return name


def plot_runs(workdirs: list[str], out: str | None = None, x: str = "step",
              labels: list[str] | None = None, log_loss: bool = True) -> str:
  """Writes the curves of `workdirs` to a PNG and returns its path (default: the one run's
  DIR/curves.png, or DIR/curves_<x>.png for another x axis)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  if out is None and len(workdirs) > 1:
    raise ValueError("several runs: say where the figure goes (out=...)")
  runs = [(labels[i] if labels else _label(d), metrics.read(d)) for i, d in enumerate(workdirs)]
  present = {k for _, rows in runs for r in rows for k, v in r.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  panels = [p for p in PANELS if p[0] in present]
  cols = min(3, len(panels)) or 1
  nrows = -(-len(panels) // cols) or 1
  fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.3 * nrows + 0.6), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (key, title, log) in zip(axes.flat, panels):
    for i, (label, rows) in enumerate(runs):
      pts = [(r[x], r[key]) for r in rows if isinstance(r.get(key), (int, float))
             and isinstance(r.get(x), (int, float))]
      if pts:
        ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=label,
                color=colors[i % len(colors)])
        band = [(r[x], r[key], r[f"{key}_std"]) for r in rows
                if isinstance(r.get(f"{key}_std"), (int, float)) and isinstance(r.get(key), float)]
        if band:  # several seeds: the mean +/- one standard deviation
          xs, mean, std = (np.asarray(v) for v in zip(*band))
          ax.fill_between(xs, np.maximum(mean - std, 1e-12 if log else -np.inf), mean + std,
                          color=colors[i % len(colors)], alpha=0.2, linewidth=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(X_LABELS.get(x, x))
    if log and (log_loss or "loss" not in key):
      ax.set_yscale("log")
    if x == "bytes_pushed":  # compressors differ by orders of magnitude
      ax.set_xscale("log")
    plain_ticks(ax.yaxis, log and (log_loss or "loss" not in key), ax.get_ylim())
    plain_ticks(ax.xaxis, x == "bytes_pushed", ax.get_xlim(), horizontal=True)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.set_visible(False)
  # one legend for the figure, naming every run (one with nothing to draw is still listed, and
  # says so when it lacks the x axis, e.g. a run without simulated time on a sim_time figure)
  def shown(label, rows):
    has_x = any(isinstance(r.get(x), (int, float)) for r in rows)
    return label if has_x or not rows else f"{label} (no {X_LABELS.get(x, x)})"
  handles = [plt.Line2D([], [], color=colors[i % len(colors)], label=shown(label, rows))
             for i, (label, rows) in enumerate(runs)]
  fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8,
             frameon=False)
  fig.tight_layout(rect=(0, 0.05 + 0.03 * ((len(handles) - 1) // 5), 1, 1))
  out = out or os.path.join(workdirs[0], "curves.png" if x == "step" else f"curves_{x}.png")
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def plot_tradeoff(summaries: list[dict], out: str, x: str = "epsilon", y: str = "eval_accuracy",
                  reference: str | None = None) -> str:
  """One point per run (x against y, e.g. test accuracy against the privacy budget epsilon),
  labelled by variant; runs without `x` (e.g. the non-private one) are horizontal lines."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  points = sorted((s[x], s[y], s.get("variant", "")) for s in summaries
                  if isinstance(s.get(x), (int, float)) and s.get(y) is not None)
  fig, ax = plt.subplots(figsize=(5.5, 4))
  if points:
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=reference or "DP-SGD")
    for px, py, name in points:
      ax.annotate(name, (px, py), textcoords="offset points", xytext=(5, 4), fontsize=7)
  for s in summaries:
    if x not in s and s.get(y) is not None:
      ax.axhline(s[y], color="gray", linestyle="--", label=f"{s.get('variant', 'reference')} "
                                                          f"({s[y]:.3f})")
  ax.set_xscale("log")
  plain_ticks(ax.xaxis, True)
  deltas = {s.get("privacy", {}).get("delta") for s in summaries} - {None}
  if len(deltas) == 1:
    ax.set_title(f"privacy-utility trade-off (delta = {deltas.pop():g})", fontsize=10)
  ax.set_xlabel(x)
  ax.set_ylabel({"eval_accuracy": "test accuracy"}.get(y, y))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def plot_networks(results: dict, networks: dict, out: str, y: str = "train_eval_loss") -> str:
  """`y` of each run against its synchronisations and against its simulated time on each of
  `networks` ({title: config.network-like (latency, bandwidth)}): one panel each, one legend.

  `results` maps a label to a train.Result whose strategy prices its communication
  (`communication(step, network)`: sync, local, gossip), so one run is drawn on every network
  without being run again; its rows need `y` (e.g. config.train.eval_train for train_eval_loss).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from pdist import network as network_lib

  priced = {name: network_lib.Network(net) for name, net in networks.items()}
  fig, axes = plt.subplots(1, 1 + len(priced), figsize=(4.6 * (1 + len(priced)), 3.9))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ("-", "--", ":", "-.")
  for i, (label, result) in enumerate(results.items()):
    # rows before the first synchronisation have no place on log axes of communication
    rows = [r for r in result.rows if y in r and result.strategy.communication(r["step"])["syncs"]]
    if not rows:
      raise ValueError(f"the run '{label}' has no '{y}' in its rows")
    values = [r[y] for r in rows]
    # earlier runs drawn wider: a run that follows another exactly (gossip on sync's syncs)
    # leaves it visible around its own line
    look = dict(color=colors[i % len(colors)], linestyle=styles[(i // len(colors)) % 4],
                label=label, linewidth=1.2 + 2.4 * (len(results) - 1 - i) / max(len(results) - 1, 1))
    syncs = [result.strategy.communication(r["step"])["syncs"] for r in rows]
    axes[0].plot(syncs, values, **look)
    for ax, net in zip(axes[1:], priced.values()):
      ax.plot([result.strategy.communication(r["step"], net)["sim_time"] for r in rows], values,
              **look)
  axes[0].set_xlabel("synchronisations (model-sized exchanges)")
  axes[0].set_title("against communication rounds", fontsize=10)
  for ax, name in zip(axes[1:], priced):
    ax.set_xlabel("simulated time (s)")
    ax.set_title(name, fontsize=10)
  for ax in axes:
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_ticks(ax.xaxis, True, ax.get_xlim(), horizontal=True)
    plain_ticks(ax.yaxis, True, ax.get_ylim())
    ax.grid(alpha=0.3)
  axes[0].set_ylabel({"train_eval_loss": "training loss (whole set)"}.get(y, y))
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
             frameon=False)
  fig.tight_layout(rect=(0, 0.05 + 0.045 * ((len(labels) - 1) // 4), 1, 1))
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pdist.plots", description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--x", default="step", help="x axis: step, epoch or sim_time")
  parser.add_argument("--out", default=None, help="PNG path (default: FIRST_WORKDIR/curves.png)")
  parser.add_argument("--labels", default=None, help="comma-separated legend labels")
  args = parser.parse_args(argv)
  for d in args.workdirs:
    if not os.path.isfile(os.path.join(d, "metrics.jsonl")):
      print(f"pdist.plots: error: {d} has no metrics.jsonl", file=sys.stderr)
      return 2
  labels = args.labels.split(",") if args.labels else None
  if labels and len(labels) != len(args.workdirs):
    print("pdist.plots: error: --labels needs one label per workdir", file=sys.stderr)
    return 2
  fields = set().union(*[row.keys() for d in args.workdirs for row in metrics.read(d)])
  if args.x not in fields:
    numeric = sorted(f for f in fields if f in ("step", "epoch", "sim_time", "bytes_pushed",
                                                "wall_time"))
    print(f"pdist.plots: error: --x {args.x} is not in these metrics; choose from: "
          f"{', '.join(numeric)}", file=sys.stderr)
    return 2
  if len(args.workdirs) > 1 and args.out is None:
    print("pdist.plots: error: several runs: say where the comparison goes with --out FILE.png "
          "(each run's own curves.png is left alone)", file=sys.stderr)
    return 2
  target = args.out or os.path.join(args.workdirs[0],
                                    "curves.png" if args.x == "step" else f"curves_{args.x}.png")
  replaced = os.path.exists(target)
  try:
    out = plot_runs(args.workdirs, args.out, args.x, labels)
  except OSError as e:
    print(f"pdist.plots: error: cannot write {e.filename or args.out}: {e.strerror}",
          file=sys.stderr)
    return 2
  print(f"pdist.plots: wrote {out}" + (" (replacing the earlier figure)" if replaced else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
