"""The parameter server: sharded store, consistency models, simulated time, compiled replay.

- sharding.py   parameters split over server shards by bytes; shard-wise optimizer updates
- timing.py     compute-time distributions, stragglers, network cost, failures
- simulator.py  the host-side event simulator: bsp / ssp / async schedules in simulated time
- strategy.py   `ps`: the schedule replayed in compiled chunks (one gradient per update)
- server.py     ParameterServer / Worker: the same math, eager, for notebooks and cross-checks
"""

from pdist.ps.server import ParameterServer, Worker
from pdist.ps.simulator import Simulator
from pdist.ps.strategy import ParameterServerStrategy

__all__ = ["ParameterServer", "Worker", "Simulator", "ParameterServerStrategy"]
