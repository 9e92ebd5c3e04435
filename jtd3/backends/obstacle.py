"""The front obstacle sensor both backends carry: its settings and the sweep that the embedded simulator and the
CARLA-protocol server compute.

CARLA's ``sensor.other.obstacle`` sweeps a sphere of ``hit_radius`` from the sensor's position along its forward
vector for ``distance`` metres and reports the first actor it touches and how far the sphere travelled (with
``only_dynamics``: vehicles and walkers only, not the road or buildings). Mounted at the front bumper's centre,
at a height inside every vehicle's box, it reads in the ground plane as a disc swept along the ego's heading:
:func:`sweep` computes exactly that against oriented rectangles (each rectangle grown by the radius, with round
corners). The sweep is straight: around a bend it looks past the lane, as CARLA's does.
"""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np

from jtd3.backends.base import ObstacleReading, Vehicles
from jtd3.config import ConfigNode, check, param

__all__ = ["ObstacleSensorConfig", "front_reading", "sweep", "sweep_vehicles"]


@dataclasses.dataclass(frozen=True)
class ObstacleSensorConfig(ConfigNode):
    """``sensor.other.obstacle`` on the ego's front bumper (centre, ``mount_z`` high), dynamic actors only."""

    enabled: bool = param(True, "attach the sensor (Snapshot.obstacle stays None without it)")
    distance: float = param(40.0, "how far the sphere is swept ahead of the bumper (m)")
    hit_radius: float = param(1.0, "sphere radius (m): about the ego's half width sweeps the lane in front of it")
    mount_z: float = param(1.0, "sensor height above the vehicle's origin (m), inside every car's box")

    def __post_init__(self) -> None:
        check(math.isfinite(self.distance) and self.distance > 0, "obstacle.distance", self.distance, "> 0")
        check(math.isfinite(self.hit_radius) and self.hit_radius > 0, "obstacle.hit_radius", self.hit_radius, "> 0")
        check(math.isfinite(self.mount_z), "obstacle.mount_z", self.mount_z, "finite")


def sweep(origin: tuple[float, float], yaw_deg: float, distance: float, radius: float, x: np.ndarray,
          y: np.ndarray, yaw: np.ndarray, half_length: np.ndarray, half_width: np.ndarray) -> tuple[int, float] | None:
    """The first rectangle touched by a disc of ``radius`` swept from ``origin`` along ``yaw_deg`` for ``distance``.

    Rectangles: centres ``(x, y)``, headings ``yaw`` (degrees), half sizes. Returns ``(index, travelled)`` of the
    nearest one (travelled 0 when the disc already touches it at the origin), or None when none is touched.
    """
    h = math.radians(yaw_deg)
    f64 = np.float64
    i, t = _sweep(float(origin[0]), float(origin[1]), math.cos(h), math.sin(h), float(distance), float(radius),
                  *(np.ascontiguousarray(a, dtype=f64).reshape(-1) for a in (x, y, yaw, half_length, half_width)))
    return (i, t) if i >= 0 else None


def sweep_vehicles(origin: tuple[float, float], yaw_deg: float, distance: float, radius: float,
                   vehicles: Vehicles) -> tuple[int, float] | None:
    """:func:`sweep` against the footprints of ``vehicles``: ``(row, travelled)`` of the first one touched."""
    if len(vehicles) == 0:
        return None
    return sweep(origin, yaw_deg, distance, radius, vehicles.location[:, 0], vehicles.location[:, 1], vehicles.yaw,
                 vehicles.extent[:, 0], vehicles.extent[:, 1])


def front_reading(frame: int, x: float, y: float, yaw_deg: float, half_length: float, cfg: ObstacleSensorConfig,
                  vehicles: Vehicles) -> ObstacleReading | None:
    """What the sensor on the front bumper of a car at ``(x, y, yaw_deg)`` (half length ``half_length``) reads
    among ``vehicles`` (the others), in the ground plane."""
    r = math.radians(yaw_deg)
    bumper = (x + half_length * math.cos(r), y + half_length * math.sin(r))
    hit = sweep_vehicles(bumper, yaw_deg, cfg.distance, cfg.hit_radius, vehicles)
    if hit is None:
        return None
    i, travelled = hit
    return ObstacleReading(frame, int(vehicles.ids[i]), travelled, np.array(vehicles.velocity[i], dtype=np.float64))


# The sweep runs at every tick against every vehicle: compiled with numba (cache=True keeps the machine code
# in __pycache__), the same IEEE operations as the array code it replaced.


@numba.njit(cache=True, nogil=True)
def _sweep(ox, oy, ux, uy, distance, radius, x, y, yaw, hl, hw):  # pragma: no cover - compiled
    """Index and entry distance of the first rectangle the swept disc touches; (-1, inf) for none."""
    best, best_t = -1, np.inf
    for i in range(x.shape[0]):
        # only rectangles whose bounding circle the swept capsule can reach (most of the traffic is elsewhere)
        reach = radius + math.hypot(hl[i], hw[i])
        dx, dy = x[i] - ox, y[i] - oy
        along = dx * ux + dy * uy
        across = abs(-dx * uy + dy * ux)
        if not (along > -reach and along < distance + reach and across < reach):
            continue
        a = math.radians(yaw[i])
        c, s = math.cos(a), math.sin(a)
        # the sweep in the rectangle's own frame: p + t d, |d| = 1, t in [0, distance]
        dx, dy = ox - x[i], oy - y[i]
        px, py = c * dx + s * dy, -s * dx + c * dy
        vx, vy = c * ux + s * uy, -s * ux + c * uy
        # the disc touches the rectangle <=> its centre is in the rectangle grown by the radius with round
        # corners: two grown rectangles and four corner circles; the entry time is the earliest of theirs
        t = min(_slab_entry(px, py, vx, vy, hl[i] + radius, hw[i]), _slab_entry(px, py, vx, vy, hl[i], hw[i] + radius))
        for sx, sy in ((1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)):
            t = min(t, _circle_entry(px - sx * hl[i], py - sy * hw[i], vx, vy, radius))
        if t <= distance and t < best_t:
            best, best_t = i, t
    return best, best_t


@numba.njit(cache=True, nogil=True)
def _slab_entry(px, py, vx, vy, hx, hy):  # pragma: no cover - compiled
    """First t >= 0 at which p + t v is inside |x| <= hx, |y| <= hy (inf if never)."""
    lo, hi = 0.0, np.inf
    for p, v, half in ((px, vx, hx), (py, vy, hy)):
        if abs(v) < 1e-12:  # moving parallel to this slab: inside it always or never
            if abs(p) > half:
                return np.inf
            continue
        t1, t2 = (-half - p) / v, (half - p) / v
        lo = max(lo, min(t1, t2))
        hi = min(hi, max(t1, t2))
    return lo if lo <= hi else np.inf


@numba.njit(cache=True, nogil=True)
def _circle_entry(qx, qy, vx, vy, r):  # pragma: no cover - compiled
    """First t >= 0 at which q + t v (q relative to the circle's centre, |v| = 1) is within r (inf if never)."""
    b = qx * vx + qy * vy
    disc = b * b - (qx * qx + qy * qy - r * r)
    root = math.sqrt(max(disc, 0.0))
    if disc >= 0 and -b + root >= 0:
        return max(-b - root, 0.0)
    return np.inf
