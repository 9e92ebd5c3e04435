"""Speed control: a PI(D) law from a target speed to throttle and brake (pure function).

Used by :class:`jtd3.envs.DrivingEnv` when ``longitudinal_action`` is ``target_speed`` (the agent sets a speed,
this law drives the pedals at every simulator tick, on either backend) and by the PID + pure-pursuit baseline.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["PidState", "following_speed", "pedals_for_speed"]


@dataclasses.dataclass(frozen=True)
class PidState:
    integral: float = 0.0  # (m/s) * s, clamped to [-10, 10]
    previous_error: float = 0.0  # m/s


def pedals_for_speed(
    v_target: float, speed: float, state: PidState, dt: float, *, kp: float, ki: float, kd: float = 0.0,
    brake_gain: float, brake_deadband: float,
) -> tuple[float, float, PidState]:
    """``(throttle, brake, next_state)`` that drive the forward ``speed`` (m/s) towards ``v_target`` (m/s).

    Throttle: ``kp * e + ki * integral(e) + kd * de/dt`` clipped to [0, 1], with e = v_target - speed. Brake:
    ``brake_gain * (overspeed - brake_deadband)`` beyond the deadband, clipped to [0, 1]; a target below 0.1 m/s
    holds the car with the full brake. Never throttle and brake together.
    """
    err = v_target - speed
    integral = min(max(state.integral + err * dt, -10.0), 10.0)
    deriv = (err - state.previous_error) / dt
    u = kp * err + ki * integral + kd * deriv
    throttle = min(max(u, 0.0), 1.0)
    brake = min((-err - brake_deadband) * brake_gain, 1.0) if err < -brake_deadband else 0.0
    if v_target < 0.1:  # hold the car at a standstill
        brake = 1.0
    if brake > 0.0:
        throttle = 0.0
    return throttle, brake, PidState(integral, err)


def following_speed(gap_m: float, lead_speed: float, *, min_gap_m: float, headway_s: float, decel: float) -> float:
    """The highest speed (m/s) from which the car still stops ``min_gap_m`` behind the vehicle ahead.

    ``gap_m``: bumper gap now; ``lead_speed``: its speed along our heading (m/s). Assumes that vehicle may brake
    to a standstill at ``decel`` (m/s^2) while we react after ``headway_s`` and then brake at ``decel``: the
    largest v with ``v * headway_s + v^2 / (2 decel) <= gap_m - min_gap_m + lead_speed^2 / (2 decel)``.
    0 when the gap is already below ``min_gap_m`` and the vehicle ahead is not moving away.
    """
    room = gap_m - min_gap_m + max(lead_speed, 0.0) ** 2 / (2.0 * decel)
    if room <= 0.0:
        return 0.0
    return decel * (math.sqrt(headway_s ** 2 + 2.0 * room / decel) - headway_s)
