"""Pure pursuit + PID: unit behaviour, and the reference route driven end to end in scenario 0."""

import numpy as np

from jtd3.envs.config import EnvConfig
from jtd3.backends.base import VehicleControl
from jtd3.baselines.pure_pursuit import PurePursuit
from jtd3.backends.sim import SimConfig, SimWorld
from jtd3.roads.routes import load_reference_route, reference_spawn


def test_steers_back_towards_the_route_and_tracks_speed():
    route = np.stack([np.linspace(0, 100, 101), np.zeros(101)], axis=1)  # eastwards along y = 0
    pp = PurePursuit(route)
    steer, throttle, brake = pp.control(0.0, 1.5, 0.0, 2.0, 0.05)  # 1.5 m right of the route (+y is south)
    assert steer < -0.05 and throttle > 0.0 and brake == 0.0  # steer left, speed up
    steer, _, _ = pp.control(1.0, -1.5, 0.0, 2.0, 0.05)
    assert steer > 0.05
    _, throttle, brake = pp.control(2.0, 0.0, 0.0, 20.0, 0.05)  # far too fast
    assert throttle == 0.0 and brake > 0.0
    assert pp.action(2.0, 0.0, 0.0, 20.0, 0.05).shape == (2,)


def test_reference_route_is_driven_end_to_end_in_scenario_0():
    world = SimWorld(SimConfig())
    route = load_reference_route()
    n = EnvConfig(scenario=0).num_vehicles  # the scenario table lives in the env config
    successes = 0
    seeds = range(5)
    for seed in seeds:
        snap = world.reset(reference_spawn(route), n, seed)
        pp = PurePursuit(route.points)
        ok = False
        for _ in range(1500):  # 75 s
            e = snap.ego
            steer, throttle, brake = pp.control(e.location[0], e.location[1], e.yaw, e.speed, world.config.dt,
                                                snap.vehicles.location[:, :2])
            snap = world.step(VehicleControl(throttle=throttle, steer=steer, brake=brake))
            if snap.collisions or world.offroad:
                break
            if pp.done:
                ok = np.hypot(*(e.location[:2] - route.points[-1])) < 4.0
                break
        successes += ok
    assert successes >= 4, f"{successes}/{len(seeds)} seeds completed the route without collision"


def test_stops_behind_a_vehicle_on_the_route():
    route = np.stack([np.linspace(0, 100, 101), np.zeros(101)], axis=1)
    pp = PurePursuit(route)
    blocker = np.array([[30.0, 0.3]])
    _, throttle, brake = pp.control(23.0, 0.0, 0.0, 5.0, 0.05, blocker)  # 7 m behind it at 5 m/s
    assert throttle == 0.0 and brake > 0.0
    _, throttle, brake = pp.control(23.0, 0.0, 0.0, 5.0, 0.05, np.array([[30.0, 5.0]]))  # next lane: ignore
    assert brake == 0.0
