"""The parameter server's parts: sharded store, consistency models, simulated time.

- sharding.py   parameters split over server shards by bytes; shard-wise optimizer updates
- timing.py     compute-time distributions, stragglers, network cost (push / pull), failures
- simulator.py  the host-side event simulator: bsp / ssp / async schedules in simulated time
- server.py     ParameterServer / Worker: the math, eager, for notebooks and cross-checks

The `ps` strategy (pdist/strategies/ps.py) replays the simulator's schedule in compiled chunks.
"""

from pdist.ps.server import ParameterServer, Worker
from pdist.ps.simulator import AsyncOp, BspRound, Simulator

__all__ = ["ParameterServer", "Worker", "Simulator", "AsyncOp", "BspRound"]
