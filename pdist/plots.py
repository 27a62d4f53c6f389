"""Figures from metrics files: python -m pdist.plots DIR [DIR ...] [--x step|epoch|sim_time] [--out PNG]

Draws training loss, eval loss and eval accuracy of one or several runs side by side; the PNG goes
to the first workdir (curves.png) unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from pdist import metrics

PANELS = (("loss", "train loss"), ("eval_loss", "eval loss"), ("eval_accuracy", "eval accuracy"))


def plot_runs(workdirs: list[str], out: str | None = None, x: str = "step",
              labels: list[str] | None = None, log_loss: bool = True) -> str:
  """Writes the curves of `workdirs` to a PNG and returns its path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = [(labels[i] if labels else os.path.basename(os.path.normpath(d)), metrics.read(d))
          for i, d in enumerate(workdirs)]
  panels = [p for p in PANELS if any(p[0] in r for _, rows in runs for r in rows)]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
  for ax, (key, title) in zip(axes[0], panels):
    for label, rows in runs:
      pts = [(r[x], r[key]) for r in rows if key in r and x in r and isinstance(r[key], float)]
      if pts:
        ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=label)
    ax.set_title(title)
    ax.set_xlabel({"step": "updates", "sim_time": "simulated time", "epoch": "epochs",
                   "bytes_pushed": "bytes pushed (all workers)"}.get(x, x))
    if log_loss and "loss" in key:
      ax.set_yscale("log")
    if x == "bytes_pushed":  # compressors differ by orders of magnitude
      ax.set_xscale("log")
    ax.grid(alpha=0.3)
  shown = set(axes[0][0].get_legend_handles_labels()[1])
  for label, _ in runs:  # a run with nothing to draw (e.g. diverged at once) is still named
    if label not in shown:
      axes[0][0].plot([], [], " ", label=label)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
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
  ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
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
  try:
    out = plot_runs(args.workdirs, args.out, args.x, labels)
  except OSError as e:
    print(f"pdist.plots: error: cannot write {e.filename or args.out}: {e.strerror}",
          file=sys.stderr)
    return 2
  print(f"pdist.plots: wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
