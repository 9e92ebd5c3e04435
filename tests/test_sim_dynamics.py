"""Ego dynamics: plausible acceleration, braking, top speed, bicycle turning radius, no NaN, actuator limits."""

import math

import numpy as np
import pytest

from jtd3.backends.base import VehicleControl
from jtd3.backends.sim.config import VehicleConfig
from jtd3.backends.sim.dynamics import EgoState, step, turning_radius

P = VehicleConfig()
DT = 0.05


def drive(state, control, seconds):
    for _ in range(int(round(seconds / DT))):
        state = step(state, control, P, DT)
    return state


def test_acceleration_top_speed_and_braking_distance():
    s = EgoState(0.0, 0.0, 0.0)
    t = 0.0
    while s.speed < 30 / 3.6:
        s = step(s, VehicleControl(throttle=1.0), P, DT)
        t += DT
    assert 1.5 < t < 5.0, f"0-30 km/h took {t:.2f} s"
    fast = drive(s, VehicleControl(throttle=1.0), 40.0)
    assert fast.speed * 3.6 > 80.0  # top speed well above 50 km/h
    # brake from 50 km/h
    b = EgoState(0.0, 0.0, 0.0, speed=50 / 3.6, vx=50 / 3.6)
    n = 0
    while b.speed > 0.0:
        b = step(b, VehicleControl(brake=1.0), P, DT)
        n += 1
    assert 10.0 < b.x < 16.0, f"braking distance {b.x:.1f} m"  # v^2 / (2 * 8) = 12.1 m plus the brake lag
    assert b.speed == 0.0 and n * DT < 3.0
    # a stopped car does not roll backwards under the brake or with no input
    assert step(b, VehicleControl(brake=1.0), P, DT).speed == 0.0
    assert step(b, VehicleControl(), P, DT).speed == 0.0


def test_heading_and_right_steer_follow_carla_convention():
    s = drive(EgoState(0.0, 0.0, 90.0), VehicleControl(throttle=0.5), 3.0)
    assert s.y > 5.0 and abs(s.x) < 1e-6  # yaw 90 deg points to +y (south)
    r = drive(EgoState(0.0, 0.0, 0.0, speed=5.0, vx=5.0), VehicleControl(throttle=0.3, steer=0.3), 1.0)
    assert r.yaw > 5.0 and r.y > 0.0 and r.yaw_rate > 0.0  # positive steer turns right (yaw grows)


@pytest.mark.parametrize("steer", [0.2, 0.5, -1.0])
def test_steady_state_turning_radius_is_the_bicycle_radius(steer):
    # hold a low speed so drag and rolling do not matter much, then fit a circle to the path
    s = EgoState(0.0, 0.0, 0.0, speed=4.0, vx=4.0, steer=steer)
    pts = []
    for _ in range(400):
        s = step(s, VehicleControl(throttle=0.25 if s.speed < 4.0 else 0.0, steer=steer), P, DT)
        pts.append((s.x, s.y))
    pts = np.array(pts[100:])
    A = np.c_[2 * pts, np.ones(len(pts))]
    cx, cy, c = np.linalg.lstsq(A, (pts**2).sum(1), rcond=None)[0]
    radius = math.sqrt(c + cx**2 + cy**2)
    assert radius == pytest.approx(turning_radius(steer, P), rel=0.02)


def test_random_controls_never_produce_nan_and_respect_rate_limits():
    rng = np.random.default_rng(0)
    s = EgoState(10.0, -3.0, 45.0)
    for _ in range(3000):
        c = VehicleControl(throttle=rng.uniform(0, 1), steer=rng.uniform(-1, 1), brake=rng.uniform(0, 1) * (rng.random() < 0.3),
                           reverse=bool(rng.random() < 0.05), hand_brake=bool(rng.random() < 0.02))
        prev = s
        s = step(s, c, P, DT)
        assert all(math.isfinite(v) for v in (s.x, s.y, s.yaw, s.speed, s.vx, s.vy, s.ax, s.ay, s.yaw_rate))
        assert abs(s.steer - prev.steer) <= P.steer_rate * DT + 1e-12
        assert -180.0 <= s.yaw < 180.0


def test_control_input_is_validated_and_clamped():
    with pytest.raises(ValueError, match="throttle"):
        VehicleControl(throttle=float("nan"))
    c = VehicleControl(throttle=3.0, steer=-7.0, brake=-1.0)
    assert (c.throttle, c.steer, c.brake) == (1.0, -1.0, 0.0)  # clamped (documented in jtd3.backends.base)


def _steady_lateral_accel(speed, steer, p=P):
    """Hold ``speed`` with a throttle P-controller at a constant ``steer``; the lateral acceleration (v * yaw
    rate) over the last 5 s, whether the friction circle capped it, and the mean squared speed held."""
    s = EgoState(0.0, 0.0, 0.0, speed=speed, vx=speed, steer=steer)
    a_lat, limited, v2 = [], [], []
    for k in range(300):
        err = speed - s.speed
        s = step(s, VehicleControl(throttle=min(max(0.3 + 2.0 * err, 0.0), 1.0), steer=steer), p, DT)
        if k >= 200:
            a_lat.append(s.speed * math.radians(s.yaw_rate))
            limited.append(s.grip_limited)
            v2.append(s.speed**2)
    return float(np.mean(a_lat)), all(limited), float(np.mean(v2))


def test_steady_state_cornering_saturates_at_the_grip_limit():
    limit = P.grip * 9.81
    steer = 0.3  # a radius of about 15 m
    radius = turning_radius(steer, P)
    for speed in (4.0, 8.0, 10.0, 14.0, 18.0):
        a_lat, limited, v2 = _steady_lateral_accel(speed, steer)
        demand = v2 / radius
        if demand < 0.95 * limit:  # within grip: the bicycle's radius, not limited
            assert a_lat == pytest.approx(demand, rel=0.03) and not limited, (speed, a_lat, demand)
        elif demand > 1.05 * limit:  # beyond grip: saturates at the limit and understeers
            assert a_lat == pytest.approx(limit, rel=0.03) and limited, (speed, a_lat, limit)
            assert v2 / a_lat > radius * 1.05  # the path is wider than the steer asks
        assert a_lat <= limit * 1.001


def test_braking_shares_the_friction_circle_with_cornering():
    # full brake in a turn: the lateral acceleration left is sqrt((mu g)^2 - a_brake^2)
    p = VehicleConfig(max_brake=7.0)
    s = EgoState(0.0, 0.0, 0.0, speed=15.0, vx=15.0, steer=0.6, brake=1.0)
    s = step(s, VehicleControl(brake=1.0, steer=0.6), p, DT)
    a_long = 7.0 + p.rolling + p.drag * 15.0**2
    left = math.sqrt((p.grip * 9.81) ** 2 - a_long**2)
    assert s.grip_limited
    assert s.speed * math.radians(s.yaw_rate) < left * 1.05
    # more grip, more cornering
    hi = step(EgoState(0.0, 0.0, 0.0, speed=15.0, vx=15.0, steer=0.6), VehicleControl(steer=0.6),
              VehicleConfig(grip=1.2), DT)
    lo = step(EgoState(0.0, 0.0, 0.0, speed=15.0, vx=15.0, steer=0.6), VehicleControl(steer=0.6), P, DT)
    assert hi.yaw_rate > lo.yaw_rate


def test_grip_is_validated():
    from jtd3.config import ConfigError
    from jtd3.backends.sim.config import NpcConfig

    with pytest.raises(ConfigError, match="vehicle.grip"):
        VehicleConfig(grip=0.0)
    with pytest.raises(ConfigError, match="npc.max_lateral_accel"):
        NpcConfig(grip=0.2)
