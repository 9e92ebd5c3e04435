"""Speed of the embedded simulator: one JSON line per measurement.

Measures SimWorld.step (steps/s, ego driven along the reference route by the pure-pursuit controller, whose
own time is excluded) for scenarios 0/1/2 with the 84x84 front camera and with the bird's-eye camera, and the
parts: road projection, front and bird's-eye rendering, NPC traffic. Single core:

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_sim.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from jtd3.backends.base import VehicleControl  # noqa: E402
from jtd3.backends.sim import SimConfig, SimWorld  # noqa: E402
from jtd3.backends.sim.render import render_birdeye  # noqa: E402
from jtd3.baselines.pure_pursuit import PurePursuit  # noqa: E402
from jtd3.config import from_dict  # noqa: E402
from jtd3.envs.config import EnvConfig  # noqa: E402
from jtd3.roads.routes import load_reference_route, reference_spawn  # noqa: E402

cv2.setNumThreads(1)


def emit(**kw) -> None:
    kw.setdefault("machine", platform.node())
    print(json.dumps(kw), flush=True)


def scenario_vehicles(scenario: int) -> int:
    """NPC count of a scenario (the table lives in the env config)."""
    return EnvConfig(scenario=scenario).num_vehicles


def bench_world(cfg: SimConfig, scenario: int, steps: int, seed: int = 0) -> float:
    world = SimWorld(cfg)
    route = load_reference_route()
    n = scenario_vehicles(scenario)
    snap = world.reset(reference_spawn(route), n, seed)
    pp = PurePursuit(route.points)
    spent = 0.0
    for _ in range(steps):
        e = snap.ego
        steer, throttle, brake = pp.control(e.location[0], e.location[1], e.yaw, e.speed, cfg.dt, snap.vehicles.location[:, :2])
        c = VehicleControl(throttle=throttle, steer=steer, brake=brake)
        t0 = time.perf_counter()
        snap = world.step(c)
        spent += time.perf_counter() - t0
        if pp.done or snap.collisions:
            seed += 1
            snap = world.reset(reference_spawn(route), n, seed)
            pp.reset()
    return steps / spent


def route_successes(scenario: int, seeds: range) -> int:
    """Seeds on which pure pursuit + PID (with its vehicle-following) completes the reference route cleanly."""
    world = SimWorld(SimConfig())
    route = load_reference_route()
    ok = 0
    for seed in seeds:
        snap = world.reset(reference_spawn(route), scenario_vehicles(scenario), seed)
        pp = PurePursuit(route.points)
        for _ in range(3000):
            e = snap.ego
            steer, throttle, brake = pp.control(e.location[0], e.location[1], e.yaw, e.speed, world.config.dt,
                                                snap.vehicles.location[:, :2])
            snap = world.step(VehicleControl(throttle=throttle, steer=steer, brake=brake))
            if snap.collisions or world.offroad:
                break
            if pp.done:
                ok += 1
                break
    return ok


def timeit(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=10, help="seeds for the reference-route success count")
    args = ap.parse_args()
    for scenario in (0, 2):
        emit(bench="reference_route_pure_pursuit", scenario=scenario, seeds=args.seeds,
             successes=route_successes(scenario, range(args.seeds)))
    front = SimConfig()
    bird = from_dict(SimConfig, {"camera": {"kind": "birdeye"}})
    for scenario in (0, 1, 2):
        emit(bench="sim_step", camera="front84", scenario=scenario, npcs=scenario_vehicles(scenario),
             steps_per_s=round(bench_world(front, scenario, args.steps), 1))
    for scenario in (0, 2):
        emit(bench="sim_step", camera="birdeye84", scenario=scenario, npcs=scenario_vehicles(scenario),
             steps_per_s=round(bench_world(bird, scenario, args.steps), 1))

    world = SimWorld(front)
    route = load_reference_route()
    world.reset(reference_spawn(route), 100, 0)
    for _ in range(100):
        world.step(VehicleControl(throttle=0.5))
    net = world.network
    x, y = float(world.ego.x), float(world.ego.y)
    one = np.array([[x, y]])
    emit(bench="project_many_1pt", us=round(1e6 * timeit(lambda: net.project_many(one), 2000), 1))
    emit(bench="project_many_1pt_yaw", us=round(1e6 * timeit(lambda: net.project_many(one, np.array([180.0])), 2000), 1))
    pts = one + np.random.default_rng(0).normal(0, 5, (1000, 2))
    emit(bench="project_many_1000pts", us_per_point=round(1e6 * timeit(lambda: net.project_many(pts), 50) / 1000, 2))
    emit(bench="project_waypoint_object", us=round(1e6 * timeit(lambda: net.project(x, y), 1000), 1))
    loc = route.locate(x, y)
    emit(bench="route_locate_hint", us=round(1e6 * timeit(lambda: route.locate(x, y, s_hint=loc.s), 2000), 1))
    v = world.traffic.vehicles()
    emit(bench="front_render_84", npcs=100, us=round(1e6 * timeit(lambda: world.render_front(84, 84, v), 1000), 1))
    emit(bench="front_render_256x144", npcs=100, us=round(1e6 * timeit(lambda: world.render_front(256, 144, v), 300), 1))
    ego = (x, y, float(world.ego.yaw))
    emit(bench="birdeye_render_84", npcs=100, us=round(1e6 * timeit(
        lambda: render_birdeye(world.raster, ego, v, route.points, 84, 84, 0.5, front.render), 1000), 1))
    t = world.traffic
    emit(bench="traffic_step", npcs=100, us=round(1e6 * timeit(lambda: t.step(front.dt, (*ego, 0.0, 2.4, 1.05)), 500), 1))
    emit(bench="town_raster_build", town="town01", s=round(timeit(
        lambda: world.network.__dict__.pop("_raster_cache", None) or
        __import__("jtd3.backends.sim.render", fromlist=["x"]).build_town_raster(world.network, front.render), 2), 2))


if __name__ == "__main__":
    main()
