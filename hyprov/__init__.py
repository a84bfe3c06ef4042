"""hyprov: declarative provisioning for Kong Gateway clusters in hybrid mode.

The public surface is small on purpose: load a topology, render kong.conf.
Heavier parts (planner, applier, transports) are imported where they are used
so that ``hyprov validate`` stays fast.
"""

from hyprov.errors import (
    ApplyError,
    CommandFailed,
    ConfigError,
    ConnectError,
    GraphError,
    HostKeyError,
    HyprovError,
    Locked,
    PKIError,
    Problem,
    StaleState,
    StateError,
    TransportError,
)

__version__ = "0.1.0"

__all__ = [
    "ApplyError",
    "CommandFailed",
    "ConfigError",
    "ConnectError",
    "GraphError",
    "HostKeyError",
    "HyprovError",
    "Locked",
    "PKIError",
    "Problem",
    "StaleState",
    "StateError",
    "TransportError",
    "__version__",
]
