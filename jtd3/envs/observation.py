"""Observation building: the camera frame stack and the kinematic vector (pure functions).

Frames: world = CARLA's (metres, x east, y south, yaw in degrees clockwise seen from above); vehicle frame =
x forward, y right (CARLA's actor-local axes). Angles in the vehicle frame are positive to the right, matching
a positive steer.

Kinematic vector, float32, length ``5 + 2 * n_waypoints`` (55 by default), each entry divided by its
``ObservationConfig`` scale and clipped to ``[-clip, clip]``:

====  ======================  ==========================================================  =================
idx   name                    raw quantity (unit)                                         divided by
====  ======================  ==========================================================  =================
0     speed                   forward speed, velocity . heading, negative in reverse (km/h) speed_scale_kmh
1     wp_distance             distance from the vehicle centre to the next waypoint (m)    distance_scale_m
2     wp_angle                angle to the next waypoint, vehicle frame, + right (deg)     angle_scale_deg
3     lane_offset             signed offset from the lane centre, + right (m)              lateral_scale_m
4     lane_heading            vehicle yaw - lane yaw, wrapped to [-180, 180), + right (deg) heading_scale_deg
5..   wp{i}_x, wp{i}_y        next waypoints i = 0..N-1, vehicle frame (m)                  waypoint_scale_m
====  ======================  ==========================================================  =================

With ``lead_vehicle`` two entries follow, what the front obstacle sensor measures of the vehicle ahead
(``jtd3.envs.reward.sensed_ahead``): ``lead_gap``, the sweep distance / ``lead_range_m`` (1 when there is
none), and ``lead_closing``, ego forward speed - its speed along the
ego heading (km/h, > 0 approaching; 0 when there is none) / ``speed_scale_kmh``.
"""

from __future__ import annotations

import math

import numpy as np

from jtd3.envs.config import ObservationConfig

__all__ = [
    "N_SCALARS",
    "kinematics_layout",
    "kinematics_size",
    "kinematics_vector",
    "push_frame",
    "repeat_frame",
    "to_vehicle_frame",
    "wrap_deg",
]

N_SCALARS = 5  # speed, wp_distance, wp_angle, lane_offset, lane_heading


def wrap_deg(a: float) -> float:
    """Angle in degrees wrapped to [-180, 180)."""
    return (a + 180.0) % 360.0 - 180.0


def to_vehicle_frame(points: np.ndarray, x: float, y: float, yaw_deg: float) -> np.ndarray:
    """World points (n, 2) -> vehicle frame (n, 2): x forward, y right, origin at (x, y) heading ``yaw_deg``."""
    r = math.radians(yaw_deg)
    c, s = math.cos(r), math.sin(r)
    d = np.asarray(points, dtype=np.float64) - np.array([x, y])
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)


def kinematics_size(cfg: ObservationConfig) -> int:
    """Length of the kinematic vector for ``cfg``."""
    return N_SCALARS + 2 * cfg.n_waypoints + (2 if cfg.lead_vehicle else 0)


def kinematics_layout(cfg: ObservationConfig) -> dict[str, slice]:
    """Name -> slice of the kinematic vector (``waypoints`` is the interleaved x0, y0, x1, y1, ... block)."""
    names = ("speed", "wp_distance", "wp_angle", "lane_offset", "lane_heading")
    out = {name: slice(i, i + 1) for i, name in enumerate(names)}
    end = N_SCALARS + 2 * cfg.n_waypoints
    out["waypoints"] = slice(N_SCALARS, end)
    if cfg.lead_vehicle:
        out["lead_gap"], out["lead_closing"] = slice(end, end + 1), slice(end + 1, end + 2)
    return out


def kinematics_vector(
    cfg: ObservationConfig,
    *,
    x: float,
    y: float,
    yaw_deg: float,
    forward_speed: float,
    waypoints: np.ndarray,
    lane_offset_m: float,
    lane_heading_deg: float,
    lead_gap_m: float | None = None,
    lead_closing_speed: float = 0.0,
) -> np.ndarray:
    """The scaled kinematic vector (see the module table).

    ``waypoints`` are the next ``n_waypoints`` route waypoints in world coordinates (n, 2), the first being
    the next waypoint; ``forward_speed`` is in m/s; ``lane_heading_deg`` is vehicle yaw - lane yaw (degrees).
    ``lead_gap_m`` (None: no vehicle ahead) and ``lead_closing_speed`` (m/s) are read with ``lead_vehicle``.
    """
    n = cfg.n_waypoints
    if waypoints.shape != (n, 2):
        raise ValueError(f"waypoints must have shape ({n}, 2), got {waypoints.shape}")
    local = to_vehicle_frame(waypoints, x, y, yaw_deg)
    dist = float(math.hypot(local[0, 0], local[0, 1]))
    angle = math.degrees(math.atan2(local[0, 1], local[0, 0]))
    out = np.empty(kinematics_size(cfg), dtype=np.float64)
    out[0] = forward_speed * 3.6 / cfg.speed_scale_kmh
    out[1] = dist / cfg.distance_scale_m
    out[2] = angle / cfg.angle_scale_deg
    out[3] = lane_offset_m / cfg.lateral_scale_m
    out[4] = wrap_deg(lane_heading_deg) / cfg.heading_scale_deg
    out[N_SCALARS:N_SCALARS + 2 * n] = local.reshape(-1) / cfg.waypoint_scale_m
    if cfg.lead_vehicle:
        out[-2] = (cfg.lead_range_m if lead_gap_m is None else min(lead_gap_m, cfg.lead_range_m)) / cfg.lead_range_m
        out[-1] = 0.0 if lead_gap_m is None else lead_closing_speed * 3.6 / cfg.speed_scale_kmh
    return np.clip(out, -cfg.clip, cfg.clip).astype(np.float32)


def repeat_frame(frame: np.ndarray, k: int) -> np.ndarray:
    """The stack at reset: ``frame`` (H, W) uint8 repeated ``k`` times -> (k, H, W) (not zeros)."""
    f = _check_frame(frame)
    return np.repeat(f[None], k, axis=0)


def push_frame(stack: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """A new stack with the oldest frame dropped and ``frame`` appended last (oldest first)."""
    f = _check_frame(frame)
    if f.shape != stack.shape[1:]:
        raise ValueError(f"camera frame has shape {f.shape}, the stack holds {stack.shape[1:]}")
    return np.concatenate([stack[1:], f[None]], axis=0)


def _check_frame(frame: np.ndarray) -> np.ndarray:
    f = np.asarray(frame)
    if f.dtype != np.uint8 or f.ndim != 2:
        raise ValueError(f"camera frame must be uint8 (H, W) grayscale, got {f.dtype} {f.shape}")
    return f
