"""Cluster mode's shared state on Redis (standalone or Redis Cluster): one module per port.

The key layout is in keys.py, the atomic steps are Lua scripts in scripts/, and
docs/cluster.md has the invariants. `RedisCoordinator` (coordinator.py) puts the ports
together.
"""

from .coordinator import RedisCoordinator

__all__ = ["RedisCoordinator"]
