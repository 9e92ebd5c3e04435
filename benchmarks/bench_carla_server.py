"""DrivingEnv steps/s over the jtd3 CARLA server vs the direct embedded backend, and the protocol's share.

Same scenario (the reference route from its start, N NPCs), same camera (front, rendered at the env's 84x84 by
the embedded simulator on both sides; ``--carla-camera 256x144`` for CarlaSession's default size), the same
fixed action. The env runs on core 0; the server (a child process) on core 1. One JSON line per measurement:

    nice -n 19 python benchmarks/bench_carla_server.py [--steps 300] [--npcs 0 20]

``protocol_share`` = 1 - direct step time / step time over the server (the direct step holds the same env work
and the same simulation and rendering, which the server reports as ``server_simulation``): the part of a step
spent in the wire, the carla client library, its Traffic Manager and CarlaSession's sensor
matching; in wall time and in CPU time (client + server processes; CPU time is what a loaded machine distorts
least: wall time there is dominated by waking the niced processes for each of the ~6 round trips a tick takes).
The first line breaks a tick of the raw client down (no jtd3 env): the bare round trip, then what the carla client
library adds with a Traffic Manager and an episode's sensors. The machine load (``loadavg``) is printed: on a
shared machine compare the rows of one run, as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from jtd3.carla_server.process import ServerProcess, shutdown_traffic_manager  # noqa: E402
from jtd3.config import from_dict  # noqa: E402
from jtd3.envs import DrivingEnv, EnvConfig  # noqa: E402
from jtd3.machine import cpu_model  # noqa: E402

ACTION = np.array([0.0, 0.35], np.float32)


def emit(**kw) -> None:
    kw.update(cpu=cpu_model() or platform.processor(), loadavg=os.getloadavg()[0])
    print(json.dumps(kw), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(env: DrivingEnv, steps: int, server_pid: int | None = None) -> dict:
    """Wall and CPU seconds (this process; the server's) spent in ``env.step`` for ``steps`` steps.

    Resets are excluded from the wall time; CPU times include them (a reset every few hundred steps).
    """
    env.reset(seed=0)
    wall, resets = 0.0, 0
    cpu0 = time.process_time()
    srv0 = server_cpu_s(server_pid) if server_pid else 0.0
    for _ in range(steps):
        t = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(ACTION)
        wall += time.perf_counter() - t
        if terminated or truncated:
            env.reset(seed=resets + 1)
            resets += 1
    return {"wall": wall, "cpu": time.process_time() - cpu0,
            "server_cpu": (server_cpu_s(server_pid) - srv0) if server_pid else 0.0, "resets": resets}


def client_breakdown(port: int, ticks: int) -> None:
    """``world.tick()`` of the raw client, adding what a CarlaSession episode has one piece at a time: a
    synchronous Traffic Manager, an ego with an 84x84 camera, an on_tick callback, a collision sensor, a
    lane-invasion sensor (computed by the client). Wall and client CPU ms per tick, cumulative."""
    import queue  # noqa: PLC0415

    import carla  # noqa: PLC0415

    client = carla.Client("127.0.0.1", port)
    client.set_timeout(10.0)
    world = client.get_world()
    world.apply_settings(carla.WorldSettings(synchronous_mode=True, fixed_delta_seconds=0.05))
    lib, sink, actors, out = world.get_blueprint_library(), queue.Queue(), [], {}

    def measure(label: str) -> None:
        for _ in range(10):
            world.tick()
        t, cpu = time.perf_counter(), time.process_time()
        for _ in range(ticks):
            world.tick()
            while not sink.empty():
                sink.get_nowait()
        out[label] = [round(1e3 * (time.perf_counter() - t) / ticks, 3), round(1e3 * (time.process_time() - cpu) / ticks, 3)]

    def sensor(type_id: str, **attributes: str) -> None:
        bp = lib.find(type_id)
        for k, v in attributes.items():
            bp.set_attribute(k, v)
        actors.append(world.spawn_actor(bp, carla.Transform(carla.Location(x=1.6, z=1.5)), attach_to=actors[0]))
        actors[-1].listen(sink.put)

    measure("bare")
    tm_port = free_port()
    tm = client.get_trafficmanager(tm_port)
    tm.set_synchronous_mode(True)
    measure("+traffic_manager")
    actors.append(world.spawn_actor(lib.find("vehicle.tesla.model3"), carla.Transform(
        carla.Location(x=317.74, y=129.49, z=0.5), carla.Rotation(yaw=180.0))))
    sensor("sensor.camera.rgb", image_size_x="84", image_size_y="84")
    measure("+ego_camera_84")
    callback = world.on_tick(sink.put)
    measure("+on_tick")
    sensor("sensor.other.collision")
    measure("+collision")
    sensor("sensor.other.lane_invasion")
    measure("+lane_invasion")
    world.remove_on_tick(callback)
    for a in reversed(actors):
        if a.type_id.startswith("sensor."):
            a.stop()
        a.destroy()
    world.apply_settings(carla.WorldSettings(synchronous_mode=False))
    tm.set_synchronous_mode(False)
    tm.shut_down()
    emit(client_breakdown_wall_cpu_ms_per_tick=out, ticks=ticks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--npcs", type=int, nargs="+", default=[0, 20])
    p.add_argument("--carla-camera", default="84x84", help="WxH the server renders for CarlaSession")
    args = p.parse_args()
    cam_w, cam_h = map(int, args.carla_camera.split("x"))
    os.sched_setaffinity(0, {0})
    with ServerProcess() as server:
        os.sched_setaffinity(server.proc.pid, {1})
        tm_port = free_port()
        client_breakdown(server.port, args.steps)
        for n in args.npcs:
            base = {"route_start": "beginning", "scenario_vehicles": [n, n, n], "max_episode_steps": 10_000}
            direct = DrivingEnv(from_dict(EnvConfig, {**base, "backend": "sim"}))
            wire = DrivingEnv(from_dict(EnvConfig, {**base, "backend": "carla", "carla": {
                "port": server.port, "tm_port": tm_port, "camera_width": cam_w, "camera_height": cam_h}}))
            try:
                run(direct, 20), run(wire, 20)  # warm-up: caches, first frames, the TM's map
                d = run(direct, args.steps)
                before, calls0 = server.control("jtd3.state"), server.control("jtd3.calls")
                w = run(wire, args.steps, server.proc.pid)
                after, calls1 = server.control("jtd3.state"), server.control("jtd3.calls")
            finally:
                direct.close()
                wire.close()
            ticks = after["frame"] - before["frame"]
            ms = lambda seconds: round(1e3 * seconds / args.steps, 3)  # noqa: E731
            compute = after["compute_s"] - before["compute_s"]  # the server's simulation and rendering
            emit(npcs=n, steps=args.steps, carla_camera=args.carla_camera, ticks_per_step=round(ticks / args.steps, 3),
                 direct_steps_per_s=round(args.steps / d["wall"], 1), server_steps_per_s=round(args.steps / w["wall"], 1),
                 ratio=round(d["wall"] / w["wall"], 3),
                 wall_ms_per_step={"direct": ms(d["wall"]), "over_server": ms(w["wall"])},
                 cpu_ms_per_step={"direct": ms(d["cpu"]), "client": ms(w["cpu"]), "server": ms(w["server_cpu"]),
                                  "server_simulation": ms(compute)},
                      protocol_share_wall=round(1 - d["wall"] / w["wall"], 3),
                 protocol_share_cpu=round(1 - d["cpu"] / (w["cpu"] + w["server_cpu"]), 3),
                 resets=[d["resets"], w["resets"]],
                 rpc_per_tick={k: round((v - calls0.get(k, 0)) / ticks, 2) for k, v in calls1.items()
                               if not k.startswith("jtd3.") and v - calls0.get(k, 0) >= ticks / 2})
        shutdown_traffic_manager(server.host, server.port, tm_port)


if __name__ == "__main__":
    main()
