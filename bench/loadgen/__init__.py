"""Multi-process WebSocket load generator: picows clients on uvloop, loopback targets only.

`LoadGen` (coordinator.py) spawns worker processes (worker.py); each holds its
connections (clients.py) bound to its own 127.x.y.z source addresses (net.py)
and records latencies into mergeable histograms (histogram.py).
"""

from .coordinator import LoadGen, LoadGenError
from .net import NotLoopback, assert_loopback_url

__all__ = ["LoadGen", "LoadGenError", "NotLoopback", "assert_loopback_url"]
