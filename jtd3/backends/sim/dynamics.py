"""Ego vehicle: kinematic bicycle model with actuator dynamics (pure functions, CARLA frame).

State is a small frozen dataclass; :func:`step` maps (state, control, params, dt) to the next state. Frame:
CARLA's (x east, y south, yaw in degrees clockwise seen from above); positive steer turns right (yaw grows).

- Steering: the wheel angle follows the command with a rate limit (``steer_rate`` normalised units per second);
  front wheel angle = steer * ``max_steer``.
- Throttle and brake: first-order lags (``throttle_tau``, ``brake_tau``).
- Longitudinal: a = throttle * max_accel * (1 - v / top_speed) - brake * max_brake - rolling - drag * v^2; the
  resistive terms never reverse the direction of motion (the car stops instead). ``reverse`` drives backwards up
  to ``reverse_top_speed``; ``hand_brake`` brakes at ``max_brake``.
- Lateral: kinematic bicycle about the reported location (``cg_to_rear`` ahead of the rear axle): slip angle
  beta = atan(l_r tan(delta) / L), yaw rate = v sin(beta) / l_r. Steady-state radius of the reported point:
  R = l_r / sin(beta).
- Tyre grip (friction circle): the tyres transmit at most ``grip * g`` in total. The longitudinal acceleration
  is capped at ``grip * g`` first (braking and driving), and the lateral acceleration the steering asks for,
  a_lat = v^2 / R, at what is left, sqrt((grip g)^2 - a_long^2). Beyond it the car understeers: the path
  curvature (and with it the yaw rate and body slip) shrinks to the largest the tyres hold, so a turn taken too
  fast leaves the lane on the outside. ``grip_limited`` reports the steps where that happened.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jtd3.backends.base import VehicleControl
from jtd3.backends.sim.config import VehicleConfig

__all__ = ["EgoState", "GRAVITY", "step", "turning_radius"]

GRAVITY = 9.81  # m/s^2


@dataclasses.dataclass(frozen=True)
class EgoState:
    x: float
    y: float
    yaw: float  # degrees
    speed: float = 0.0  # m/s along the heading, negative in reverse
    steer: float = 0.0  # actual normalised steer in [-1, 1]
    throttle: float = 0.0  # actual throttle in [0, 1] after the lag
    brake: float = 0.0  # actual brake in [0, 1] after the lag
    vx: float = 0.0  # world-frame velocity (m/s)
    vy: float = 0.0
    ax: float = 0.0  # world-frame acceleration over the last step (m/s^2)
    ay: float = 0.0
    yaw_rate: float = 0.0  # deg/s
    grip_limited: bool = False  # the friction circle capped the lateral acceleration on the last step

    @property
    def velocity(self) -> np.ndarray:
        return np.array([self.vx, self.vy, 0.0])


def _approach(current: float, target: float, dt: float, tau: float) -> float:
    return current + (target - current) * min(dt / tau, 1.0)


def step(state: EgoState, control: VehicleControl, p: VehicleConfig, dt: float) -> EgoState:
    """Advance the ego by ``dt`` seconds under ``control`` (already clamped by ``VehicleControl``)."""
    # Actuators.
    max_delta = p.steer_rate * dt
    steer = state.steer + min(max(control.steer - state.steer, -max_delta), max_delta)
    throttle = _approach(state.throttle, control.throttle, dt, p.throttle_tau)
    brake_cmd = 1.0 if control.hand_brake else control.brake
    brake = _approach(state.brake, brake_cmd, dt, p.brake_tau)

    # Longitudinal.
    v = state.speed
    if control.reverse:
        drive = -throttle * p.max_accel * max(1.0 - (-v) / p.reverse_top_speed, 0.0)
    else:
        drive = throttle * p.max_accel * max(1.0 - v / p.top_speed, 0.0)
    resist = brake * p.max_brake + p.rolling + p.drag * v * v
    # Friction circle, longitudinal part: neither drive nor brake transmits more than grip * g.
    a_grip = p.grip * GRAVITY
    drive = min(max(drive, -a_grip), a_grip)
    resist = min(resist, a_grip)
    if v > 0.0:
        v_new = v + (drive - resist) * dt
        if v_new < 0.0 and drive >= 0.0:
            v_new = 0.0
    elif v < 0.0:
        v_new = v + (drive + resist) * dt
        if v_new > 0.0 and drive <= 0.0:
            v_new = 0.0
    else:  # standing: move only if the drive beats the brake and rolling resistance
        net = abs(drive) - resist
        v_new = math.copysign(net * dt, drive) if net > 0.0 else 0.0

    # Lateral (kinematic bicycle about the reported point): path curvature sin(beta) / l_r.
    delta = math.radians(steer * p.max_steer)
    beta = math.atan(p.cg_to_rear * math.tan(delta) / p.wheelbase)
    v_mid = 0.5 * (v + v_new)
    curvature = math.sin(beta) / p.cg_to_rear
    # Friction circle, lateral part: what the longitudinal acceleration leaves of grip * g.
    a_long = (v_new - v) / dt
    a_lat_max = math.sqrt(max(a_grip * a_grip - a_long * a_long, 0.0))
    a_lat = v_mid * v_mid * abs(curvature)
    grip_limited = a_lat > a_lat_max
    if grip_limited:  # understeer: the largest curvature the tyres hold, same sign
        curvature = math.copysign(a_lat_max / (v_mid * v_mid), curvature)
        beta = math.asin(min(max(curvature * p.cg_to_rear, -1.0), 1.0))
    yaw_rate = math.degrees(v_mid * curvature)
    yaw_mid = math.radians(state.yaw + 0.5 * yaw_rate * dt) + beta
    x = state.x + v_mid * math.cos(yaw_mid) * dt
    y = state.y + v_mid * math.sin(yaw_mid) * dt
    yaw = (state.yaw + yaw_rate * dt + 180.0) % 360.0 - 180.0
    heading = math.radians(yaw) + beta
    vx, vy = v_new * math.cos(heading), v_new * math.sin(heading)
    return EgoState(
        x=x,
        y=y,
        yaw=yaw,
        speed=v_new,
        steer=steer,
        throttle=throttle,
        brake=brake,
        vx=vx,
        vy=vy,
        ax=(vx - state.vx) / dt,
        ay=(vy - state.vy) / dt,
        yaw_rate=yaw_rate,
        grip_limited=grip_limited,
    )


def turning_radius(steer: float, p: VehicleConfig) -> float:
    """Steady-state turning radius (m) of the reported point at normalised ``steer`` (inf when straight)."""
    delta = math.radians(abs(steer) * p.max_steer)
    if delta == 0.0:
        return math.inf
    beta = math.atan(p.cg_to_rear * math.tan(delta) / p.wheelbase)
    return p.cg_to_rear / math.sin(beta)
