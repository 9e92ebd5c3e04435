"""Roads and routes, shared by both backends: OpenDRIVE reader, road network, routes, towns. See docs/sim.md.

- :mod:`jtd3.roads.opendrive`: the OpenDRIVE (.xodr) reader (lines, arcs, spirals, lanes, lane marks).
- :mod:`jtd3.roads.network`: :class:`RoadNetwork` (lanes, lane graph, KD-tree projection, CARLA-like waypoints).
- :mod:`jtd3.roads.lanes`: the values it hands out (lanes, waypoints, projections, routes), CARLA's enum names.
- :mod:`jtd3.roads.planning`: route planning on the driving-lane graph (mixed into :class:`RoadNetwork`).
- :mod:`jtd3.roads.routes`: route polylines, the reference route and spawn.
- :mod:`jtd3.roads.towns`: :func:`load_town` (Town01, shipped) and the procedural towns (generated OpenDRIVE).
"""

from jtd3.roads.network import RoadNetwork
from jtd3.roads.towns import load_town

__all__ = ["RoadNetwork", "load_town"]
