"""Speed control: a PI(D) law from a target speed to throttle and brake (pure function).

Used by :class:`jtd3.envs.DrivingEnv` when ``longitudinal_action`` is ``target_speed`` (the agent sets a speed,
this law drives the pedals at every simulator tick, on either backend) and by the PID + pure-pursuit baseline.
"""

from __future__ import annotations

import dataclasses

__all__ = ["PidState", "pedals_for_speed"]


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
