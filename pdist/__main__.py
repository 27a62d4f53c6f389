"""python -m pdist --config experiments/NAME.py[:presets] --workdir DIR [--config.group.field=value ...]

The only place that reads the command line. Bad input (config file, field, value) prints one
sentence to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

USAGE = ("python -m pdist --config experiments/NAME.py[:preset,...] --workdir DIR "
         "[--config.group.field=value ...]")


EXIT_STATUSES = """exit statuses:
  0   finished (or already finished in this workdir)
  2   bad input: a config file, field or value, a workdir, a key, a checkpoint that cannot be used
  3   training stopped: the loss became non-finite, or an output could not be written
  4   the processes of a multi-process run could not find each other
  75  preempted (SIGTERM / SIGINT): a checkpoint was saved; run the same command again"""


def _experiments_epilog() -> str:
  """The experiments under ./experiments with their one-line cards and presets."""
  import ast
  import glob
  here = os.path.join(os.getcwd(), "experiments")
  if not os.path.isdir(here):
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
  lines = []
  for path in sorted(glob.glob(os.path.join(here, "*.py"))):
    try:
      tree = ast.parse(open(path).read())
    except (OSError, SyntaxError):
      continue
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    presets = ""
    for node in tree.body:
      if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PRESETS"
                                              for t in node.targets):
        if isinstance(node.value, ast.Dict):
          presets = ", ".join(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    name = os.path.relpath(path)
    lines.append(f"  {name}\n      {doc[0] if doc else ''}" +
                 (f"\n      presets: {presets}" if presets else ""))
  return "experiments:\n" + "\n".join(lines)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(
      prog="python -m pdist", usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Train a pdist experiment: an experiment file's config, with presets after the "
                  "colon and --config.group.field=value overrides (booleans: true/false). Every "
                  "field and its meaning: README.md, 'Config fields', or --print_config.",
      epilog=_experiments_epilog() + "\n\n" + EXIT_STATUSES if "-h" in argv or "--help" in argv
      else EXIT_STATUSES)
  parser.add_argument("--config", required=True, help="experiment file, optionally :presets")
  parser.add_argument("--workdir", default=None,
                      help="directory for metrics, summary, checkpoints, TensorBoard events")
  parser.add_argument("--print_config", action="store_true",
                      help="print the resolved config (after presets and overrides) and exit")
  group = parser.add_argument_group("several processes (one per machine, or pdist.launch)")
  group.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
  group.add_argument("--num_processes", type=int, default=1)
  group.add_argument("--process_id", type=int, default=0)
  group.add_argument("--local_devices", type=int, default=0,
                     help="CPU devices of this process (0 = as configured)")
  group.add_argument("--init_timeout", type=int, default=60,
                     help="seconds to wait for all processes to join")
  args, rest = parser.parse_known_args(argv)
  # argparse may hand back "--config.x" "v" as two items; join them to "--config.x=v"
  overrides, i = [], 0
  while i < len(rest):
    item = rest[i]
    if item.startswith("--config.") and "=" not in item and i + 1 < len(rest):
      item, i = f"{item}={rest[i + 1]}", i + 1
    overrides.append(item)
    i += 1
  return args, overrides


def _compilation_cache() -> None:
  """Reuse compiled programs across runs (JAX's persistent cache), unless the user chose a dir."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    from pdist.data.datasets import cache_dir
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(cache_dir(), "jax")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


class _StoppedEarly(Exception):
  """SIGTERM before training set up its own handling (while importing, loading, compiling)."""


def _stop_early(signum, frame):
  del frame
  raise _StoppedEarly(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
  previous = None
  if threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGTERM, _stop_early)  # train.run has its own while it runs
  try:
    return _main(argv)
  except _StoppedEarly as e:
    print(f"pdist: preempted: received {e} while starting, before any update; nothing new was "
          "saved; run the same command again", file=sys.stderr)
    return 75
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
  args, overrides = parse(sys.argv[1:] if argv is None else argv)
  if not 0 <= args.process_id < max(args.num_processes, 1) or args.num_processes < 1:
    print(f"pdist: error: --process_id={args.process_id} must be in [0, --num_processes="
          f"{args.num_processes})", file=sys.stderr)
    return 2
  _compilation_cache()
  from pdist import config as config_lib

  try:
    config = config_lib.load(args.config, overrides)
  except config_lib.ConfigError as e:
    print(f"pdist: error: {e}", file=sys.stderr)
    return 2
  if args.print_config:
    print(config.to_json(indent=2, sort_keys=True))
    return 0
  if args.workdir is None:
    print("pdist: error: --workdir is required (where metrics, summary and checkpoints go)",
          file=sys.stderr)
    return 2

  if args.coordinator or args.num_processes > 1:
    from pdist.parallel import multihost
    try:
      multihost.initialize(args.coordinator or "", args.num_processes, args.process_id,
                           args.local_devices, args.init_timeout)
    except multihost.DistributedError as e:
      print(f"pdist: error: {e}", file=sys.stderr)
      return 4
  elif args.local_devices:
    import jax
    jax.config.update("jax_num_cpu_devices", args.local_devices)

  from pdist import train
  from pdist.workdir import OutputError

  try:
    result = train.run(config, args.workdir,
                       command=["python", "-m", "pdist", *(sys.argv[1:] if argv is None else argv)])
  except config_lib.ConfigError as e:
    print(f"pdist: error: {e}", file=sys.stderr)
    return 2
  except OutputError as e:
    kept = getattr(e, "last_checkpoint", None)   # set when train.run knew it (summary.json too)
    print(f"pdist: training stopped: {e}; the newest complete checkpoint"
          f"{f' (update {kept})' if kept is not None else ''} in "
          f"{os.path.join(args.workdir, 'checkpoints')} is kept", file=sys.stderr)
    return 3
  except train.TrainingError as e:
    print(f"pdist: training stopped: {e}", file=sys.stderr)
    return 3
  except train.Preempted as e:
    print(f"pdist: preempted: {e}", file=sys.stderr)
    return train.PREEMPTED_EXIT
  except KeyboardInterrupt:
    print("pdist: interrupted (no workdir to checkpoint to)", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 -- checkpoint problems: one line, no traceback
    from pdist.checkpoint import CheckpointError
    if isinstance(e, CheckpointError):
      print(f"pdist: error: {e}", file=sys.stderr)
      return 2
    raise
  import jax
  if jax.process_index() != 0:
    return 0
  final = {k: v for k, v in result.summary.items()
           if k.startswith("eval_") or k in ("loss", "step", "updates_per_sec")}
  print(json.dumps(final, sort_keys=True))
  print(f"pdist: metrics in {os.path.join(args.workdir, 'metrics.jsonl')}, "
        f"summary in {os.path.join(args.workdir, 'summary.json')}; "
        f"plot with: python -m pdist.plots {args.workdir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
