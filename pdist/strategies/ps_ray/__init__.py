"""`ps` on real processes: `--config.ps.backend=ray`.

The same parameter server as the emulator (strategies/ps.py), but the K workers are Ray actors —
separate processes, each computing gradients with JAX on its own data partition — and the order
of events is whatever the real clocks give. The server stays in this process:

  submit: worker w gets the current parameters and its iteration number, which picks its batch
          (on one machine through a shared-memory row of its own; on a cluster as one object in
          Ray's store per version, shared by every pull of that version)
  wait:   `ray.wait` returns the first finished gradient; async: apply it (server.ParameterServer,
          the same optimizer, shard by shard, lr / staleness under staleness_lr=inverse) and hand
          that worker the new version; ssp: the same, but a worker more than max_staleness clocks
          ahead of the slowest waits for it; bsp: a round applies the mean of the first
          workers - backup_workers gradients of that round, later ones are dropped.
  faults: a worker whose process dies (ps.failures.at=((seconds, worker), ...) kills one that
          many wall-clock seconds after every worker was ready; anything else may too) loses
          its in-flight gradient; Ray restarts the process and it rejoins with fresh parameters.

Every pull, applied update and lost gradient is a *record*; train.run appends them to
WORKDIR/trace.jsonl. The math of a record is a pure function of the parameters it names, so
`python -m pdist.replay WORKDIR` recomputes the run from its trace in one process with the same
compiled programs and gets the same parameters bit for bit: a real run, non-deterministic as it
is, becomes a reproducible artefact, and a resumed run is its trace's replay. One local Ray
instance is started and stopped by the run (bound to 127.0.0.1, no dashboard) unless
config.ps.ray_address names a cluster. config.ps.ray_tls='auto' (or 'files' with a cluster's
certificates) runs all of Ray's gRPC with mutual TLS (pdist/tls.py).

The package, along its seams: transport.py (flat vectors, shared-memory rows), workers.py (the
gradient program and the Ray actor), cluster.py (starting Ray, scripted kills), server.py (the
server loop, the strategy).
"""

from pdist.strategies.ps_ray.cluster import kill_schedule, start_ray  # noqa: F401
from pdist.strategies.ps_ray.server import RayParameterServer, validate_ray  # noqa: F401
from pdist.strategies.ps_ray.transport import Flat, Slots  # noqa: F401
from pdist.strategies.ps_ray.workers import Worker, WorkerProcess, workers_of  # noqa: F401
