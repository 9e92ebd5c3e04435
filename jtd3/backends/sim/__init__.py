"""The embedded driving simulator with CARLA semantics (default backend). See docs/sim.md.

- :class:`SimWorld` implements :class:`jtd3.backends.base.Backend`.
- :class:`SimConfig` holds every setting (town, dt, camera, vehicle, NPC traffic, rendering).

Roads and routes (OpenDRIVE, road network, route polylines), used by both backends, live in :mod:`jtd3.roads`.
"""

from jtd3.backends.sim.config import SimConfig
from jtd3.backends.sim.world import SimWorld

__all__ = ["SimConfig", "SimWorld"]
