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
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    h = math.radians(yaw_deg)
    ux, uy = math.cos(h), math.sin(h)
    hl, hw = np.asarray(half_length, dtype=np.float64), np.asarray(half_width, dtype=np.float64)
    # only rectangles whose bounding circle the swept capsule can reach (most of the traffic is elsewhere)
    reach = radius + np.hypot(hl, hw)
    dx, dy = x - origin[0], y - origin[1]
    along = dx * ux + dy * uy
    across = np.abs(-dx * uy + dy * ux)
    idx = np.flatnonzero((along > -reach) & (along < distance + reach) & (across < reach))
    if idx.size == 0:
        return None
    x, y, hl, hw = x[idx], y[idx], hl[idx], hw[idx]
    a = np.radians(np.asarray(yaw, dtype=np.float64)[idx])
    c, s = np.cos(a), np.sin(a)
    # the sweep in each rectangle's own frame: p + t d, |d| = 1, t in [0, distance]
    dx, dy = origin[0] - x, origin[1] - y
    px, py = c * dx + s * dy, -s * dx + c * dy
    vx, vy = c * ux + s * uy, -s * ux + c * uy
    # the disc touches the rectangle <=> its centre is in the rectangle grown by the radius with round corners:
    # the union of two grown rectangles and four corner circles; the entry time is the earliest of theirs
    t = np.minimum(_slab_entry(px, py, vx, vy, hl + radius, hw), _slab_entry(px, py, vx, vy, hl, hw + radius))
    for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        t = np.minimum(t, _circle_entry(px - sx * hl, py - sy * hw, vx, vy, radius))
    t = np.where(t <= distance, t, np.inf)
    i = int(np.argmin(t))
    return (int(idx[i]), float(t[i])) if math.isfinite(t[i]) else None


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


def _slab_entry(px, py, vx, vy, hx, hy) -> np.ndarray:
    """First t >= 0 at which p + t v is inside |x| <= hx, |y| <= hy (inf if never)."""
    lo, hi = np.zeros_like(px), np.full_like(px, np.inf)
    for p, v, half in ((px, vx, hx), (py, vy, hy)):
        still = np.abs(v) < 1e-12  # moving parallel to this slab: inside it always or never
        inside = np.abs(p) <= half
        v = np.where(still, 1.0, v)
        t1, t2 = (-half - p) / v, (half - p) / v
        lo = np.maximum(lo, np.where(still, np.where(inside, -np.inf, np.inf), np.minimum(t1, t2)))
        hi = np.minimum(hi, np.where(still, np.where(inside, np.inf, -np.inf), np.maximum(t1, t2)))
    return np.where(lo <= hi, lo, np.inf)


def _circle_entry(qx, qy, vx, vy, r) -> np.ndarray:
    """First t >= 0 at which q + t v (q relative to the circle's centre, |v| = 1) is within r (inf if never)."""
    b = qx * vx + qy * vy
    disc = b * b - (qx * qx + qy * qy - r * r)
    root = np.sqrt(np.maximum(disc, 0.0))
    t_in, t_out = -b - root, -b + root
    return np.where((disc >= 0) & (t_out >= 0), np.maximum(t_in, 0.0), np.inf)
