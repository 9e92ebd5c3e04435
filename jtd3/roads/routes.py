"""Route polylines: the reference route of the Town01 experiment and routes planned on a road network.

A :class:`RoutePolyline` keeps the coarse waypoints it was built from **and** a dense polyline, with an explicit
map between them (``waypoint_index[j]`` is the dense index of coarse waypoint ``j``, ``waypoint_s[j]`` its arc
length). Never index one array with the other's indices: the original project shared one index between a coarse
route and a 1 cm densified copy, which zeroed every waypoint feature after the car moved.

Frame: CARLA's (metres, x east, y south, yaw in degrees clockwise seen from above).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jtd3 import DATA_DIR
from jtd3.backends.base import Pose
from jtd3.roads.projection import nearest_on_polyline

__all__ = [
    "RouteLocation",
    "RoutePolyline",
    "densify",
    "load_reference_route",
    "reference_spawn",
    "route_from_plan",
]

REFERENCE_ROUTE_CSV = DATA_DIR / "town01_reference_route.csv"


@dataclasses.dataclass(frozen=True)
class RouteLocation:
    """Where a point lies relative to a route polyline."""

    s: float  # arc length of the foot point from the route start (m)
    index: int  # dense segment index i: the foot lies between points[i] and points[i + 1]
    x: float  # foot point on the polyline
    y: float
    yaw: float  # heading of that segment (degrees)
    lateral_offset: float  # signed, positive = right of the route direction (m)
    distance: float  # |point - foot| (m)


@dataclasses.dataclass(frozen=True)
class RoutePolyline:
    """A dense polyline with cumulative arc length, plus the coarse waypoints it interpolates."""

    points: np.ndarray  # (N, 2) dense points, x and y in metres
    s: np.ndarray  # (N,) cumulative arc length (m), s[0] = 0
    yaw: np.ndarray  # (N,) heading of the segment leaving each point (the last repeats), degrees
    waypoints: np.ndarray  # (M, 2) the coarse waypoints (e.g. the 86 rows of the reference CSV)
    waypoint_index: np.ndarray  # (M,) int: points[waypoint_index[j]] == waypoints[j]
    waypoint_s: np.ndarray  # (M,) arc length of each coarse waypoint

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def point_at(self, s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, yaw_deg) at arc length ``s`` (clamped to [0, length]); vectorised."""
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        i = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.s) - 2)
        seg = np.maximum(self.s[i + 1] - self.s[i], 1e-12)
        u = (s - self.s[i]) / seg
        p = self.points[i] + u[..., None] * (self.points[i + 1] - self.points[i])
        return p[..., 0], p[..., 1], self.yaw[i]

    def locate(self, x: float, y: float, s_hint: float | None = None, window: float = 30.0) -> RouteLocation:
        """Nearest point of the polyline to (x, y).

        With ``s_hint`` (e.g. the previous step's ``s``) only segments within ``window`` metres of arc length
        around it are searched, so a route that passes near itself cannot make progress jump; without it the
        whole route is searched.
        """
        if s_hint is None:
            lo, hi = 0, len(self.points) - 1
        else:
            lo = max(int(np.searchsorted(self.s, s_hint - window, side="right")) - 1, 0)
            hi = min(int(np.searchsorted(self.s, s_hint + window, side="left")) + 1, len(self.points) - 1)
            hi = max(hi, lo + 1)
        i, t, fx, fy, len2, dist2 = nearest_on_polyline(self.points, lo, hi, float(x), float(y))
        yaw = math.degrees(math.atan2(self.points[i + 1, 1] - self.points[i, 1],
                                      self.points[i + 1, 0] - self.points[i, 0]))
        r = math.radians(yaw)
        lateral = -math.sin(r) * (x - fx) + math.cos(r) * (y - fy)
        s = float(self.s[i] + t * math.sqrt(len2))
        return RouteLocation(s, i, fx, fy, yaw, lateral, math.sqrt(dist2))

    def next_waypoint(self, s: float) -> int:
        """Index of the first coarse waypoint strictly ahead of arc length ``s`` (M when none is left)."""
        return int(np.searchsorted(self.waypoint_s, s, side="right"))


def densify(waypoints: np.ndarray, spacing: float = 1.0) -> RoutePolyline:
    """Linear interpolation of (M, 2) waypoints with at most ``spacing`` metres between dense points.

    The coarse waypoints are kept exactly as dense vertices; repeated consecutive waypoints are rejected.
    """
    wp = np.asarray(waypoints, dtype=np.float64)
    if wp.ndim != 2 or wp.shape[1] != 2 or wp.shape[0] < 2:
        raise ValueError(f"waypoints must have shape (M >= 2, 2), got {wp.shape}")
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0, got {spacing!r}")
    seg = np.hypot(*np.diff(wp, axis=0).T)
    if np.any(seg < 1e-9):
        raise ValueError(f"waypoints {np.flatnonzero(seg < 1e-9).tolist()} repeat the next one")
    pts = [wp[:1]]
    index = [0]
    for i in range(len(wp) - 1):
        n = max(int(math.ceil(seg[i] / spacing)), 1)
        u = np.arange(1, n + 1)[:, None] / n
        pts.append(wp[i] + u * (wp[i + 1] - wp[i]))
        index.append(index[-1] + n)
    points = np.concatenate(pts)
    d = np.diff(points, axis=0)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(d[:, 0], d[:, 1]))])
    yaw = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    yaw = np.concatenate([yaw, yaw[-1:]])
    idx = np.array(index, dtype=np.int64)
    return RoutePolyline(points, s, yaw, wp, idx, s[idx])


def load_reference_route(spacing: float = 1.0, path: str | None = None) -> RoutePolyline:
    """The Town01 reference route (86 waypoints, 264.4 m) as a dense polyline (``jtd3/data``)."""
    p = REFERENCE_ROUTE_CSV if path is None else path
    return densify(read_waypoints_csv(p), spacing)


def read_waypoints_csv(path) -> np.ndarray:
    """(M, 2) x, y rows of a CSV; ``#`` comment lines and one non-numeric header row are skipped."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.split(",")
            try:
                rows.append((float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                if rows:
                    raise ValueError(f"{path}:{n}: expected 'x,y' numbers, got {stripped!r}") from None
    return np.array(rows, dtype=np.float64)


def reference_spawn(route: RoutePolyline | None = None) -> Pose:
    """Spawn pose of a route: its first point, facing along its first segment (reference route: yaw 180)."""
    r = load_reference_route() if route is None else route
    x, y = r.points[0]
    return Pose(float(x), float(y), float(r.yaw[0]))


def route_from_plan(route, spacing: float = 1.0) -> RoutePolyline:
    """A :class:`RoutePolyline` from a planned :class:`jtd3.roads.lanes.Route` (its lane-boundary points as waypoints)."""
    pts = np.asarray(route.points, dtype=np.float64)
    return densify(pts, spacing)
