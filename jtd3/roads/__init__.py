"""Roads and routes, shared by both backends: OpenDRIVE reader, road network, routes, towns. See docs/sim.md.

- :mod:`jtd3.roads.opendrive`: the OpenDRIVE (.xodr) reader (lines, arcs, spirals, lanes, lane marks).
- :mod:`jtd3.roads.network`: :class:`RoadNetwork` (lanes, projection, CARLA-like waypoints, route planning) and
  :func:`load_town`.
- :mod:`jtd3.roads.routes`: route polylines, the reference route and spawn.
- :mod:`jtd3.roads.towns`: the procedural towns (generated OpenDRIVE).
"""

from jtd3.roads.network import RoadNetwork, load_town

__all__ = ["RoadNetwork", "load_town"]
