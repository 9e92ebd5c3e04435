"""The embedded driving simulator with CARLA semantics (default backend). See docs/sim.md.

- :class:`SimWorld` implements :class:`jtd3.backend.Backend`.
- :class:`SimConfig` holds every setting (town, dt, camera, vehicle, NPC traffic, rendering).
- :mod:`jtd3.sim.roads` / :mod:`jtd3.sim.routes`: road network (OpenDRIVE) and route polylines, used by the
  environment on both backends.
"""

from jtd3.sim.config import SimConfig
from jtd3.sim.roads import RoadNetwork, load_town
from jtd3.sim.world import SimWorld

__all__ = ["RoadNetwork", "SimConfig", "SimWorld", "load_town"]
