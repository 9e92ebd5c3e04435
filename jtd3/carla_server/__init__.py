"""A CARLA 0.9.16 server made of the embedded simulator: the unmodified ``carla`` client drives it.

See docs/carla_server.md. ``CarlaServer`` starts one in-process; ``jtd3-carla-server`` from the shell.
"""

from jtd3.carla_server.server import CarlaServer, Faults

__all__ = ["CarlaServer", "Faults"]
