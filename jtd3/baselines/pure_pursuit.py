"""PID speed control + pure-pursuit steering on a route polyline (a pure function of ego state and route).

Frame: CARLA's (x east, y south, yaw degrees clockwise); positive steer turns right. The env wraps
:class:`PurePursuit` as a policy; ``control(...)`` returns ``(steer, throttle, brake)`` in the
``VehicleControl`` ranges, and ``action(...)`` the ``[steer, throttle_brake]`` action in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jtd3.envs.speed_control import PidState, pedals_for_speed

__all__ = ["PurePursuit", "PurePursuitParams", "PidState"]


@dataclasses.dataclass(frozen=True)
class PurePursuitParams:
    wheelbase: float = 2.9  # m
    max_steer: float = 35.0  # front wheel angle at steer = 1 (degrees)
    lookahead_min: float = 4.0  # m
    lookahead_gain: float = 0.6  # s: lookahead = min + gain * speed
    target_speed: float = 8.0  # m/s cruise
    curve_lateral_accel: float = 2.0  # m/s^2: slow down for curvature ahead
    curve_preview: float = 25.0  # m of route checked for curvature
    kp: float = 0.5  # 1/(m/s): throttle per speed error
    ki: float = 0.05
    kd: float = 0.0
    brake_gain: float = 0.3  # brake per m/s of overspeed beyond brake_deadband
    brake_deadband: float = 0.5  # m/s
    stop_distance: float = 2.0  # m before the route end the controller brakes to a stop
    follow_preview: float = 40.0  # m of route watched for other vehicles
    follow_decel: float = 3.0  # m/s^2: speed target sqrt(2 * decel * (gap - standstill)) behind a vehicle
    follow_standstill: float = 4.0  # m kept to a vehicle on the route (centre to bumper margin included)
    follow_clearance: float = 2.2  # m: a vehicle whose centre is this close to the route blocks it


class PurePursuit:
    """Stateless apart from the PID integrator and the progress along the route (``s``)."""

    def __init__(self, route_xy: np.ndarray, params: PurePursuitParams | None = None) -> None:
        pts = np.asarray(route_xy, dtype=np.float64).reshape(-1, 2)
        if len(pts) < 2:
            raise ValueError(f"route needs at least 2 points, got {len(pts)}")
        self.p = PurePursuitParams() if params is None else params
        self.points = pts
        seg = np.hypot(*np.diff(pts, axis=0).T)
        self.s = np.concatenate([[0.0], np.cumsum(seg)])
        heading = np.arctan2(np.diff(pts[:, 1]), np.diff(pts[:, 0]))
        dh = np.abs((np.diff(heading) + np.pi) % (2 * np.pi) - np.pi)
        curv = np.zeros(len(pts))
        curv[1:-1] = dh / np.maximum(0.5 * (seg[1:] + seg[:-1]), 1e-6)
        self.curvature = curv
        self.progress = 0.0
        self.pid = PidState()
        self.last_speed_target = 0.0

    def reset(self) -> None:
        self.progress = 0.0
        self.pid = PidState()

    def _locate(self, x: float, y: float) -> float:
        lo = max(int(np.searchsorted(self.s, self.progress - 5.0)) - 1, 0)
        hi = min(int(np.searchsorted(self.s, self.progress + 30.0)) + 1, len(self.points) - 1)
        p0, p1 = self.points[lo:hi], self.points[lo + 1 : hi + 1]
        d = p1 - p0
        t = np.clip(np.einsum("ij,ij->i", np.array([x, y]) - p0, d) / np.maximum(np.einsum("ij,ij->i", d, d), 1e-12), 0, 1)
        foot = p0 + t[:, None] * d
        k = int(np.argmin(np.hypot(foot[:, 0] - x, foot[:, 1] - y)))
        return float(self.s[lo + k] + t[k] * np.hypot(*d[k]))

    def _gap_to_vehicles(self, vehicles_xy: np.ndarray) -> float:
        """Arc length from the ego's progress to the first route point another vehicle blocks (inf if none)."""
        p = self.p
        if vehicles_xy is None or len(vehicles_xy) == 0:
            return math.inf
        ahead = (self.s > self.progress) & (self.s <= self.progress + p.follow_preview)
        pts = self.points[ahead]
        if len(pts) == 0:
            return math.inf
        d = np.hypot(pts[:, None, 0] - vehicles_xy[None, :, 0], pts[:, None, 1] - vehicles_xy[None, :, 1])
        blocked = np.flatnonzero((d < p.follow_clearance).any(axis=1))
        return math.inf if blocked.size == 0 else float(self.s[ahead][blocked[0]] - self.progress)

    def control(self, x: float, y: float, yaw: float, speed: float, dt: float,
                vehicles_xy: np.ndarray | None = None) -> tuple[float, float, float]:
        """(steer, throttle, brake) for the ego at (x, y, yaw deg) moving at ``speed`` m/s.

        ``vehicles_xy`` (N, 2): other vehicles' positions; the speed target drops so as to stop
        ``follow_standstill`` metres before the first one on the route ahead (simple adaptive cruise).
        """
        p = self.p
        self.progress = max(self.progress, self._locate(x, y))
        look = p.lookahead_min + p.lookahead_gain * max(speed, 0.0)
        s_t = min(self.progress + look, self.s[-1])
        tx = np.interp(s_t, self.s, self.points[:, 0])
        ty = np.interp(s_t, self.s, self.points[:, 1])
        c, sn = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        dx, dy = tx - x, ty - y
        fwd, right = dx * c + dy * sn, -dx * sn + dy * c
        ld2 = max(fwd * fwd + right * right, 1e-6)
        delta = math.atan(2.0 * p.wheelbase * right / ld2)  # positive right -> positive steer
        steer = max(min(math.degrees(delta) / p.max_steer, 1.0), -1.0)
        v_target = self.speed_target(vehicles_xy)
        throttle, brake, self.pid = pedals_for_speed(
            v_target, speed, self.pid, dt, kp=p.kp, ki=p.ki, kd=p.kd, brake_gain=p.brake_gain,
            brake_deadband=p.brake_deadband,
        )
        self.last_speed_target = v_target
        return steer, throttle, brake

    def speed_target(self, vehicles_xy: np.ndarray | None = None) -> float:
        """Cruise speed, capped by the curvature ahead, a stop at the route end and the vehicle ahead (m/s)."""
        p = self.p
        ahead = (self.s >= self.progress) & (self.s <= self.progress + p.curve_preview)
        kmax = float(self.curvature[ahead].max()) if ahead.any() else 0.0
        v_target = min(p.target_speed, math.sqrt(p.curve_lateral_accel / max(kmax, 1e-6)))
        remaining = self.s[-1] - self.progress - p.stop_distance
        v_target = min(v_target, math.sqrt(max(2.0 * 2.0 * remaining, 0.0)))
        gap = self._gap_to_vehicles(None if vehicles_xy is None else np.asarray(vehicles_xy, dtype=np.float64).reshape(-1, 2))
        if math.isfinite(gap):
            v_target = min(v_target, math.sqrt(max(2.0 * p.follow_decel * (gap - p.follow_standstill), 0.0)))
        return v_target

    def action(self, x: float, y: float, yaw: float, speed: float, dt: float,
               vehicles_xy: np.ndarray | None = None) -> np.ndarray:
        """``[steer, throttle_brake]`` in [-1, 1] (the env's action space)."""
        steer, throttle, brake = self.control(x, y, yaw, speed, dt, vehicles_xy)
        return np.array([steer, throttle - brake], dtype=np.float32)

    @property
    def done(self) -> bool:
        return self.progress >= self.s[-1] - self.p.stop_distance - 0.5
