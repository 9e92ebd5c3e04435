"""The values a :class:`jtd3.roads.network.RoadNetwork` hands out (lanes, waypoints, projections, routes) and the
tables that name OpenDRIVE's lane types and marks as CARLA's enums do."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "LANE_CHANGE_BITS",
    "LANE_CHANGE_NAMES",
    "LANE_TYPES",
    "MARK_TYPES",
    "LaneInfo",
    "LaneMarking",
    "Projection",
    "ProjectionBatch",
    "Route",
    "Waypoint",
]

# carla.LaneMarkingType names for OpenDRIVE roadMark types (CARLA's RoadInfoMarkRecord parser).
MARK_TYPES = {
    "none": "NONE",
    "solid": "Solid",
    "broken": "Broken",
    "solid solid": "SolidSolid",
    "solid broken": "SolidBroken",
    "broken solid": "BrokenSolid",
    "broken broken": "BrokenBroken",
    "botts dots": "BottsDots",
    "grass": "Grass",
    "curb": "Curb",
}
# carla.LaneChange bit values: NONE=0, Right=1, Left=2, Both=3. OpenDRIVE laneChange increase/decrease map to
# Right/Left numerically, as CARLA's parser does.
LANE_CHANGE_BITS = {"none": 0, "increase": 1, "decrease": 2, "both": 3}
LANE_CHANGE_NAMES = ("NONE", "Right", "Left", "Both")

# carla.LaneType names for OpenDRIVE lane types.
LANE_TYPES = {
    "none": "NONE",
    "driving": "Driving",
    "stop": "Stop",
    "shoulder": "Shoulder",
    "biking": "Biking",
    "sidewalk": "Sidewalk",
    "border": "Border",
    "restricted": "Restricted",
    "parking": "Parking",
    "bidirectional": "Bidirectional",
    "median": "Median",
    "special1": "Special1",
    "special2": "Special2",
    "special3": "Special3",
    "roadworks": "RoadWorks",
    "tram": "Tram",
    "rail": "Rail",
    "entry": "Entry",
    "exit": "Exit",
    "offramp": "OffRamp",
    "onramp": "OnRamp",
}


@dataclasses.dataclass(frozen=True)
class LaneMarking:
    """A lane boundary marking as ``carla.LaneMarking`` reports it (type/color names of CARLA's enums)."""

    type: str  # carla.LaneMarkingType name: "NONE", "Solid", "Broken", "SolidSolid", "Curb", ...
    color: str  # OpenDRIVE colour ("standard", "white", "yellow", ...)
    width: float  # metres
    lane_change: str  # carla.LaneChange name of this record


@dataclasses.dataclass(frozen=True)
class LaneInfo:
    """A lane of one lane section (a node of the lane graph)."""

    index: int
    road_id: int
    section_id: int
    lane_id: int
    type: str  # OpenDRIVE type ("driving", "sidewalk", ...)
    s0: float  # section start along the road
    s1: float  # section end
    junction_id: int  # -1 outside junctions

    @property
    def length(self) -> float:
        return self.s1 - self.s0

    @property
    def forward(self) -> bool:
        """True when travel goes with increasing s (CARLA: lane_id <= 0)."""
        return self.lane_id <= 0

    @property
    def is_junction(self) -> bool:
        return self.junction_id >= 0


@dataclasses.dataclass(frozen=True)
class Waypoint:
    """A point on a lane centre, like ``carla.Waypoint`` (CARLA frame, yaw in degrees along the travel direction)."""

    lane_index: int  # index into RoadNetwork.lanes
    road_id: int
    section_id: int
    lane_id: int
    s: float  # OpenDRIVE s along the road (decreases along travel for lane_id > 0, as in CARLA)
    x: float
    y: float
    z: float
    yaw: float  # degrees, CARLA convention, direction of travel
    lane_width: float
    lane_type: str  # carla.LaneType name ("Driving", "Sidewalk", ...)
    is_junction: bool
    junction_id: int
    left_marking: LaneMarking | None
    right_marking: LaneMarking | None
    lane_change: str  # carla.LaneChange name

    @property
    def location(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z])


@dataclasses.dataclass(frozen=True)
class Projection(Waypoint):
    """A query point projected onto its nearest lane centre: a :class:`Waypoint` plus the offsets."""

    lateral_offset: float = 0.0  # metres, positive = right of the direction of travel
    distance: float = 0.0  # metres from the query point to the lane centre (2D)


@dataclasses.dataclass(frozen=True)
class ProjectionBatch:
    """Vectorised projection of N points (arrays of shape (N,)); see :meth:`RoadNetwork.project_many`."""

    lane_index: np.ndarray  # int64
    road_id: np.ndarray
    lane_id: np.ndarray
    s: np.ndarray  # OpenDRIVE s
    x: np.ndarray  # lane centre, CARLA frame
    y: np.ndarray
    yaw: np.ndarray  # lane heading along travel, degrees (CARLA)
    lane_width: np.ndarray
    lateral_offset: np.ndarray  # positive = right of travel direction
    distance: np.ndarray  # |query - centre|
    is_junction: np.ndarray  # bool

    @property
    def inside(self) -> np.ndarray:
        """True where the query lies within half a lane width of the centre (CARLA's ``project_to_road=False``)."""
        return self.distance < 0.5 * self.lane_width


@dataclasses.dataclass(frozen=True)
class Route:
    """A route on the lane graph: the lanes used and a dense centre-line polyline (CARLA frame)."""

    lanes: tuple[tuple[int, float, float], ...]  # (lane index, s_from, s_to) in travel order
    points: np.ndarray  # (N, 2) x, y
    yaw: np.ndarray  # (N,) degrees
    s: np.ndarray  # (N,) cumulative arc length from the start (m)

    @property
    def length(self) -> float:
        return float(self.s[-1])
