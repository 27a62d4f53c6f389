"""python -m pdist.launch --processes N --devices-per-process D [--timeout S] -- PDIST_ARGS...

Starts N `python -m pdist` processes on this machine, on loopback, as one jax.distributed group
with D CPU devices each (the same code path as N machines), waits for them and returns the worst
exit status. Only process 0 writes the workdir and shows progress. If one process fails, the
others are stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(pdist_args: list[str], processes: int, devices_per_process: int,
           timeout_s: float = 600, init_timeout_s: int = 60) -> int:
  """Runs the group; returns 0 if every process succeeded, else the first non-zero status."""
  coordinator = f"127.0.0.1:{free_port()}"
  env = dict(os.environ)
  # each process sets its own CPU device count; a forced count from the parent must not leak in
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  procs = [subprocess.Popen(
      [sys.executable, "-m", "pdist", *pdist_args, "--coordinator", coordinator,
       "--num_processes", str(processes), "--process_id", str(i),
       "--local_devices", str(devices_per_process), "--init_timeout", str(init_timeout_s)],
      env=env) for i in range(processes)]
  deadline = time.monotonic() + timeout_s
  codes: list[int | None] = [None] * processes
  try:
    while any(c is None for c in codes):
      for i, p in enumerate(procs):
        if codes[i] is None:
          codes[i] = p.poll()
      failed = [c for c in codes if c not in (None, 0)]
      if failed or time.monotonic() > deadline:
        if not failed:
          print(f"pdist.launch: error: the group did not finish within {timeout_s:.0f} s",
                file=sys.stderr)
        break
      time.sleep(0.05)  # polling child processes; not a synchronisation of the computation
  finally:
    for p in procs:
      if p.poll() is None:
        p.terminate()
    for p in procs:
      try:
        p.wait(timeout=10)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
  codes = [p.returncode for p in procs]
  for i, c in enumerate(codes):
    if c is not None and (c < 0 or c == 134):
      print(f"pdist.launch: process {i} was killed (status {c}); the group was stopped",
            file=sys.stderr)
  bad = [c for c in codes if c != 0]
  return bad[0] if bad else 0


def run_and_interrupt(pdist_args: list[str], after_checkpoints: int = 2,
                      signum: int = signal.SIGTERM, timeout_s: float = 600) -> int:
  """Runs `python -m pdist PDIST_ARGS` and sends `signum` once it has started its
  `after_checkpoints`-th checkpoint; returns its exit status (75 after a SIGTERM it survived).

  A way to rehearse preemption (SIGTERM, SIGINT) or a hard crash (SIGKILL) of a real run.
  """
  proc = subprocess.Popen([sys.executable, "-m", "pdist", *pdist_args], stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True)
  seen = 0
  try:
    for line in proc.stderr:
      if line.startswith("pdist: checkpoint at update"):
        seen += 1
        if seen == after_checkpoints:
          proc.send_signal(signum)
          break
    proc.stderr.read()
    return proc.wait(timeout=timeout_s)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(
      prog="python -m pdist.launch", usage="python -m pdist.launch [options] -- PDIST_ARGS...",
      description="Runs N `python -m pdist` processes on this machine, on loopback, as one "
                  "jax.distributed group (the same code path as N machines).",
      epilog="Example: python -m pdist.launch --processes 2 --devices-per-process 2 -- "
             "--config experiments/mnist1d_sync.py --workdir runs/sync_2x2")
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices-per-process", type=int, default=1)
  parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
  parser.add_argument("--init-timeout", type=int, default=60,
                      help="seconds for the processes to find each other")
  if "--" not in argv:
    if any(a in ("-h", "--help") for a in argv):
      parser.parse_args(["--help"])
    print("pdist.launch: error: put the pdist arguments after '--' (see --help)", file=sys.stderr)
    return 2
  split = argv.index("--")
  args = parser.parse_args(argv[:split])
  if args.processes < 1 or args.devices_per_process < 1:
    print("pdist.launch: error: --processes and --devices-per-process must be positive",
          file=sys.stderr)
    return 2
  return launch(argv[split + 1:], args.processes, args.devices_per_process, args.timeout,
                args.init_timeout)


if __name__ == "__main__":
  sys.exit(main())
