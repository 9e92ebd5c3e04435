"""The CARLA backend without a server: a fake server for the control flow, the real wheel for value types.

Nothing here needs a CARLA server. Tests that need the ``carla`` wheel skip cleanly without it. The real
carla client is only ever pointed at a port verified closed (bind, then release): a client pointed at a
port where another program answers aborts the whole process.
"""

from __future__ import annotations

import ast
import inspect
import logging
import pickle
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fake_carla
from fake_carla import FakeServer, make_carla
from jtd3.backends.base import Backend, Pose, VehicleControl
from jtd3.config import ConfigError, from_dict, track_reads
from jtd3.backends.carla.client import (
    check_versions,
    choose_npc_spawns,
    destroy_commands,
    restored_settings,
    sync_settings,
    to_carla_control,
)
from jtd3.backends.carla.config import CarlaConfig
from jtd3.backends.carla.errors import (
    CarlaEpisodeLost,
    CarlaError,
    CarlaSensorTimeout,
    CarlaSpawnError,
    CarlaUnavailableError,
    CarlaVersionError,
    is_timeout,
)
from jtd3.backends.carla.probe import probe_carla_rpc
from jtd3.backends.carla.sensors import EventQueue, FrameQueue, bgra_to_gray
from jtd3.backends.carla.session import CarlaSession
from jtd3.backends.obstacle import ObstacleSensorConfig

START = Pose(x=317.74, y=129.49, yaw=180.0)  # the reference route's spawn, facing west


def session(server: FakeServer | None = None, **overrides) -> tuple[CarlaSession, FakeServer]:
    server = server if server is not None else FakeServer()
    cfg = CarlaConfig(**{"probe": False, "reconnect_backoff_s": 0.0, "sensor_timeout_s": 0.5, **overrides})
    return CarlaSession(cfg, carla_module=make_carla(server)), server


def sensors_and_vehicles(server: FakeServer) -> tuple[list[int], list[int]]:
    return server.spawned("sensor."), server.spawned("vehicle.")


def assert_clean(server: FakeServer) -> None:
    """Every actor ever spawned is destroyed, sensors stopped before destroyed, nothing the real server hates."""
    assert server.alive() == []
    assert server.violations == []
    sensors, vehicles = sensors_and_vehicles(server)
    for s in sensors:  # (a sensor left when its server died is destroyed by the next client: not listening there)
        if ("stop", s) in server.log:
            assert server.index(("stop", s)) < server.index(("destroy", s))


def closed_port() -> int:
    """A localhost port nothing listens on (bound, then released; its neighbour checked too)."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535 and all(_is_closed(p) for p in (port, port + 1)):
            return port
    raise RuntimeError("no closed port found")


def _is_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ----------------------------------------------------------------------------------------------------------
# Connecting


def test_connect_sets_synchronous_mode_traffic_manager_and_keeps_original_settings():
    s, server = session(FakeServer(), tm_port=8123)
    assert isinstance(s, Backend)
    assert server.settings["synchronous_mode"] is True
    assert server.settings["fixed_delta_seconds"] == pytest.approx(0.05)
    assert server.settings["no_rendering_mode"] is False
    assert server.tm[8123]["sync"] is True and server.tm[8123]["distance"] == 2.5
    assert s.opendrive == server.opendrive
    kinds = [e[0] for e in server.log]
    assert kinds.index("apply_settings") < kinds.index("tm_sync") < kinds.index("tick")
    assert ("load_world_if_different", "Town01", False) in server.log and not any(k == "load_world" for k in kinds)
    s.close()
    assert server.settings["synchronous_mode"] is False and server.settings["fixed_delta_seconds"] is None
    assert server.log[-2:] == [("tm_sync", 8123, False), ("tm_shut_down", 8123)]  # a fresh TM per session
    assert_clean(server)


def test_a_shared_traffic_manager_is_left_running_when_asked():
    s, server = session(FakeServer(), tm_port=8124, tm_shut_down_on_close=False)
    s.close()
    assert server.tm[8124]["sync"] is False and ("tm_shut_down", 8124) not in server.log


def test_a_tick_stuck_in_the_traffic_manager_is_woken_by_the_watchdog(caplog):
    server = FakeServer()
    server.tm_rpc = True  # the watchdog reaches the TM over its RPC server (its Python API waits on a lock)
    s, _ = session(server, tick_timeout_s=0.1, tick_watchdog_s=0.3)
    s.reset(START, 2, 0)
    server.tm_deadlocks = 1
    with caplog.at_level("WARNING", logger="jtd3.backends.carla.session"):
        frames = [s.step(VehicleControl(throttle=0.5)).frame]  # stuck until the watchdog wakes the TM
        # The watchdog switches the TM back on right after waking it; wait for that, as a tick in between
        # would find the TM asynchronous for that moment (the fake records it as a violation).
        deadline = time.monotonic() + 5.0
        while not server.tm[8000]["sync"] and time.monotonic() < deadline:
            time.sleep(0.01)
        frames += [s.step(VehicleControl(throttle=0.5)).frame for _ in range(2)]
    assert np.all(np.diff(frames) == 1)  # the stuck tick returned its frame and stepping went on
    assert server.tm_woken == 1 and s.stuck_ticks == 1 and "carla-simulator/carla#9172" in caplog.text
    assert server.tm[8000]["sync"] is True and server.log.count(("tm_sync", 8000, False)) == 1
    s.close()
    assert_clean(server)


def test_tick_watchdog_must_outlast_the_ticks_own_timeouts():
    with pytest.raises(ValueError, match="carla.tick_watchdog_s"):
        CarlaConfig(tick_timeout_s=10.0, tick_watchdog_s=15.0)
    assert CarlaConfig(tick_timeout_s=10.0, tick_watchdog_s=0.0).tick_watchdog_s == 0.0


def test_load_world_if_different_with_reset_settings_false():
    server = FakeServer(town="Town03")
    s, _ = session(server)
    assert server.town == "Town01"
    assert ("load_world", "Town01", False) in server.log
    saved = [e for e in server.log if e[0] == "apply_settings"]
    assert server.index(("load_world", "Town01", False)) < server.index(saved[0])
    s.close()
    assert server.settings["synchronous_mode"] is False  # the settings found before the load, restored


def test_version_mismatch_is_an_error_unless_allowed(caplog):
    with pytest.raises(CarlaVersionError, match=r"'0\.9\.15'.*'0\.9\.16'.*pip install carla==0\.9\.15"):
        session(FakeServer(version="0.9.15"))
    with caplog.at_level(logging.WARNING):
        s, server = session(FakeServer(version="0.9.15"), allow_version_mismatch=True)
    assert "differs" in caplog.text
    s.close()
    check_versions("0.9.16", "0.9.16-12-gabcdef", allow_mismatch=False)  # build suffixes are fine
    with pytest.raises(CarlaVersionError):
        check_versions("0.9.16", "garbage", allow_mismatch=False)


def test_no_server_fails_with_instructions():
    server = FakeServer()
    server.down = True
    with pytest.raises(CarlaUnavailableError) as err:
        session(server, port=2345, timeout_s=0.7)
    msg = str(err.value)
    assert "./CarlaUE4.sh -RenderOffScreen -carla-rpc-port=2345" in msg and "--env sim" in msg
    assert "time-out of 700ms" in msg


def test_timeout_half_way_through_connect_restores_the_settings():
    server = FakeServer()
    server.fail["get_trafficmanager"] = 1  # after the server was switched to synchronous mode
    with pytest.raises(CarlaUnavailableError):
        session(server)
    assert server.settings["synchronous_mode"] is False  # not left frozen


def test_server_left_synchronous_is_reported_and_can_be_released(caplog):
    with caplog.at_level(logging.WARNING):
        s, server = session(FakeServer(synchronous_mode=True))
    assert "already in synchronous mode" in caplog.text
    s.close()
    assert server.settings["synchronous_mode"] is True  # "original": exactly what was found
    s, server = session(FakeServer(synchronous_mode=True), restore_settings="asynchronous")
    s.close()
    assert server.settings["synchronous_mode"] is False and server.settings["fixed_delta_seconds"] is None


# ----------------------------------------------------------------------------------------------------------
# Reset and step


def test_reset_spawns_ego_npcs_sensors_and_ticks_after_spawning():
    s, server = session()
    snap = s.reset(START, num_vehicles=5, seed=3)
    ego = snap.ego
    assert snap.frame == server.frame
    np.testing.assert_allclose(ego.location[:2], [START.x, START.y])
    assert ego.yaw == pytest.approx(180.0) and ego.type_id == "vehicle.tesla.model3"
    np.testing.assert_allclose(ego.extent, [2.4, 1.0, 0.8])
    assert server.record(ego.id).attrs["role_name"] == "hero"
    # one tick right after the ego spawned, before anything else was spawned
    ego_spawn = server.index(("spawn", ego.id, "vehicle.tesla.model3"))
    assert server.log[ego_spawn + 1][0] == "tick"
    # NPCs: one batch, autopilot on the configured TM, seeded TM, four wheels only
    npcs = [i for i in server.spawned("vehicle.") if i != ego.id]
    assert len(npcs) == 5 and sorted(snap.vehicles.ids.tolist()) == sorted(npcs)
    assert all(server.record(i).autopilot_port == 8000 for i in npcs)
    assert all(server.record(i).type_id != "vehicle.bh.crossbike" for i in npcs)
    assert ("tm_seed", 8000, 3) in server.log
    assert snap.vehicles.location.shape == (5, 3) and snap.vehicles.extent.shape == (5, 3)
    # sensors on the ego
    cams = [r for r in server.records.values() if r.type_id == "sensor.camera.rgb"]
    assert len(cams) == 1 and cams[0].parent == ego.id
    attrs = cams[0].attrs
    assert (attrs["image_size_x"], attrs["image_size_y"], attrs["fov"]) == ("256", "144", "90.0")
    assert {r.type_id for r in server.records.values() if r.parent == ego.id} == {
        "sensor.camera.rgb", "sensor.other.collision", "sensor.other.lane_invasion", "sensor.other.obstacle"}
    (obstacle,) = [r for r in server.records.values() if r.type_id == "sensor.other.obstacle"]
    assert (obstacle.attrs["distance"], obstacle.attrs["hit_radius"], obstacle.attrs["only_dynamics"]) == (
        "40.0", "1.0", "true")
    assert snap.obstacle is None  # the sensor fires only while something is in range
    # the camera frame of exactly this tick, gray, output size
    assert snap.camera.shape == (84, 84) and snap.camera.dtype == np.uint8
    assert np.all(snap.camera == snap.frame % 251)
    s.close()
    assert_clean(server)


def test_npc_choice_is_deterministic_in_the_seed():
    def npc_layout(seed):
        s, server = session()
        snap = s.reset(START, num_vehicles=8, seed=seed)
        out = sorted(zip(snap.vehicles.location[:, 0].round(3), snap.vehicles.location[:, 1].round(3),
                         [server.record(i).type_id for i in snap.vehicles.ids],
                         [server.record(i).attrs["color"] for i in snap.vehicles.ids]))
        s.close()
        return out

    assert npc_layout(7) == npc_layout(7)
    assert npc_layout(7) != npc_layout(8)


def test_step_drives_the_ego_and_returns_plain_data():
    s, server = session()
    first = s.reset(START, num_vehicles=2, seed=0)
    snaps = [s.step(VehicleControl.from_action([0.0, 1.0])) for _ in range(20)]
    frames = [first.frame] + [x.frame for x in snaps]
    assert frames == list(range(first.frame, first.frame + 21))
    np.testing.assert_allclose(np.diff([first.timestamp] + [x.timestamp for x in snaps]), 0.05)
    assert snaps[-1].ego.location[0] < START.x - 1.0  # facing west: x decreases
    assert snaps[-1].ego.speed > 1.0
    assert all(np.all(x.camera == x.frame % 251) for x in snaps)
    late = s.step(VehicleControl(), camera=False)  # the server sends the frame anyway
    assert np.all(late.camera == late.frame % 251) and s.camera() is late.camera
    restored = pickle.loads(pickle.dumps(snaps[-1]))  # no carla object inside
    np.testing.assert_array_equal(restored.camera, snaps[-1].camera)
    s.close()
    assert_clean(server)


def test_control_reaches_the_ego_clamped():
    s, server = session()
    snap = s.reset(START, num_vehicles=0, seed=0)
    s.step(VehicleControl.from_action([5.0, -2.0]))
    c = server.record(snap.ego.id).control
    assert isinstance(c, fake_carla.VehicleControl)
    assert (c.steer, c.throttle, c.brake, c.hand_brake, c.reverse) == (1.0, 0.0, 1.0, False, False)
    with pytest.raises(TypeError):
        s.step(np.array([0.0, 1.0]))
    s.close()


def test_reset_destroys_the_previous_episode():
    s, server = session()
    s.reset(START, num_vehicles=4, seed=0)
    first = set(server.alive())
    assert len(first) == 1 + 4 + 4
    snap = s.reset(START, num_vehicles=3, seed=1)
    assert not first & set(server.alive())
    assert len(server.alive()) == 1 + 3 + 4 and len(snap.vehicles) == 3
    assert server.violations == []
    s.close()
    assert_clean(server)


def test_close_order_sensors_stopped_then_destroyed_then_vehicles_tick_settings_tm():
    s, server = session()
    s.reset(START, num_vehicles=3, seed=0)
    s.step(VehicleControl(throttle=0.5))
    n = len(server.log)
    s.close()
    tail = server.log[n:]
    kinds = [e[0] for e in tail]
    sensors, vehicles = sensors_and_vehicles(server)
    stops = [tail.index(("stop", i)) for i in sensors]
    sensor_destroys = [tail.index(("destroy", i)) for i in sensors]
    vehicle_destroys = [tail.index(("destroy", i)) for i in vehicles]
    assert max(stops) < min(sensor_destroys)
    assert max(sensor_destroys) < min(vehicle_destroys)
    last_tick = len(kinds) - 1 - kinds[::-1].index("tick")
    assert max(vehicle_destroys) < last_tick < kinds.index("apply_settings") < kinds.index("tm_sync")
    assert tail[kinds.index("apply_settings")][1]["synchronous_mode"] is False
    assert_clean(server)
    s.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        s.reset(START, 0, 0)


def test_context_manager_closes():
    server = FakeServer()
    with CarlaSession(CarlaConfig(probe=False), carla_module=make_carla(server)) as s:
        s.reset(START, 2, 0)
    assert s.closed
    assert_clean(server)


def test_step_before_reset_and_bad_arguments():
    s, _ = session()
    with pytest.raises(RuntimeError, match="before reset"):
        s.step(VehicleControl())
    with pytest.raises(ValueError, match="num_vehicles"):
        s.reset(START, -1, 0)
    with pytest.raises(ValueError, match="seed"):
        s.reset(START, 1, -5)
    with pytest.raises(ValueError, match="finite"):
        s.reset(Pose(x=float("nan"), y=0.0, yaw=0.0), 1, 0)
    with pytest.raises(ValueError, match=r"num_vehicles = 101, but only 100"):
        s.reset(START, 101, 0)
    s.close()


# ----------------------------------------------------------------------------------------------------------
# Spawning


def test_ego_spawn_retries_are_bounded_and_lift_the_car():
    s, server = session(spawn_retries=3, spawn_lift_m=0.5)
    server.refuse_spawns = 2
    snap = s.reset(START, 0, 0)
    assert server.record(snap.ego.id).transform.location.z == pytest.approx(3 * 0.5)  # third attempt
    server.refuse_spawns = 100
    with pytest.raises(CarlaSpawnError, match=r"4 attempts.*spawn_retries = 3"):
        s.reset(START, 2, 0)
    assert server.refuse_spawns == 100 - 4
    assert server.alive() == []  # the failed reset left nothing behind (sensors included)
    server.refuse_spawns = 0
    s.reset(START, 2, 0)
    s.close()
    assert_clean(server)


def test_failed_npc_spawns_are_reported_not_hidden(caplog):
    server = FakeServer(spawn_points=[(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (50.0, 0.0, 0.0)])  # two overlap
    s, _ = session(server)
    with caplog.at_level(logging.WARNING):
        snap = s.reset(START, 3, seed=0)
    assert len(snap.vehicles) == 2 and len(s.npc_spawn_failures) == 1
    assert "collision at spawn position" in s.npc_spawn_failures[0] and "1 of 3 NPC spawns failed" in caplog.text
    s.close()
    assert_clean(server)


def test_unknown_ego_blueprint_names_the_choices():
    s, server = session(ego_blueprint="vehicle.nope.nope")
    with pytest.raises(ValueError, match=r"'vehicle\.nope\.nope'.*vehicle\.audi\.a2"):
        s.reset(START, 0, 0)
    s.close()
    assert_clean(server)


def test_choose_npc_spawns_keeps_distance_and_is_seeded():
    xy = np.array([[0.0, 0.0], [5.0, 0.0], [20.0, 0.0], [0.0, 30.0], [100.0, 100.0]])
    picks = {tuple(choose_npc_spawns(xy, (0.0, 0.0), 3, 15.0, np.random.default_rng(s))) for s in range(10)}
    assert all(set(p) == {2, 3, 4} for p in picks) and len(picks) > 1
    assert choose_npc_spawns(xy, (0.0, 0.0), 2, 15.0, np.random.default_rng(1)).tolist() == \
        choose_npc_spawns(xy, (0.0, 0.0), 2, 15.0, np.random.default_rng(1)).tolist()
    with pytest.raises(ValueError, match="only 3 of the map's 5"):
        choose_npc_spawns(xy, (0.0, 0.0), 4, 15.0, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------------------
# Sensor frames: late, duplicated, out of order, missing


@pytest.mark.parametrize(
    "name, plan",
    [
        ("late", lambda f: [(0.15, f)]),
        ("duplicated", lambda f: [(0.0, f), (0.0, f), (0.02, f)]),
        ("stale first", lambda f: [(0.0, f - 1), (0.0, f - 2), (0.05, f)]),
        ("out of order", lambda f: [(0.05, f), (0.0, f - 1), (0.01, f - 3)]),
    ],
)
def test_camera_frames_are_matched_on_the_tick(name, plan):
    s, server = session()
    server.plans["camera"] = plan
    server.plans["world"] = lambda f: [(0.03, f)]  # the world snapshot arrives after tick() returns
    snaps = [s.reset(START, 1, 0)] + [s.step(VehicleControl(throttle=0.3)) for _ in range(5)]
    for x in snaps:
        assert np.all(x.camera == x.frame % 251), name
    s.close()
    server.join_timers()
    assert_clean(server)


def test_missing_camera_frame_times_out_and_ends_the_episode():
    s, server = session(sensor_timeout_s=0.3)
    first = s.reset(START, 2, 0)
    missing = first.frame + 2
    server.plans["camera"] = lambda f: [] if f == missing else [(0.0, f)]
    s.step(VehicleControl())
    t0 = time.monotonic()
    with pytest.raises(CarlaSensorTimeout, match=rf"camera: no data for frame {missing} within 0.3 s"):
        s.step(VehicleControl())
    assert time.monotonic() - t0 >= 0.25  # it waited for the frame (a loaded machine only makes this longer)
    assert server.alive() == [] and server.violations == []  # the episode was torn down
    with pytest.raises(RuntimeError, match="before reset"):
        s.step(VehicleControl())
    snap = s.reset(START, 2, 1)  # and the session still works
    assert np.all(snap.camera == snap.frame % 251)
    s.close()
    assert_clean(server)


def test_frame_queue_order_duplicates_and_early_frames():
    q = FrameQueue("cam", frame_of=lambda item: item[0])
    for item in [(5, "a"), (7, "b"), (6, "c"), (6, "dup"), (8, "d"), (7, "b2")]:
        q.put(item)
    assert q.get(6, 0.1) == (6, "c")  # 5 dropped (stale), 7 kept for later
    assert q.get(7, 0.1) == (7, "b")  # from the buffer; the second 7 is stale when met
    assert q.get(8, 0.1) == (8, "d")  # the duplicate 6 is dropped on the way
    assert q.stats == {"stale": 2, "early": 1, "duplicate": 0}
    with pytest.raises(CarlaSensorTimeout, match=r"no data for frame 9 within 0.05 s.*\[7\]"):
        q.get(9, 0.05)  # the leftover 7 is drained as stale
    for item in [(12, "e"), (12, "e2"), (11, "f")]:
        q.put(item)
    assert q.get(11, 0.1) == (11, "f") and q.get(12, 0.1) == (12, "e")
    assert q.stats == {"stale": 3, "early": 2, "duplicate": 1}
    late = FrameQueue("cam", frame_of=lambda item: item[0])
    threading.Timer(0.05, late.put, args=((10, "x"),)).start()
    assert late.get(10, 1.0) == (10, "x")


def test_event_queue_keeps_later_frames_and_reports_late_events():
    q = EventQueue("collision", frame_of=lambda item: item[0])
    for item in [(11, "x"), (10, "a"), (10, "b"), (12, "later")]:
        q.put(item)
    assert q.take(11) == [(10, "a"), (10, "b"), (11, "x")]
    q.put((11, "late"))  # arrived after frame 11 was collected: comes out with the next take
    assert q.take(12) == [(11, "late"), (12, "later")]
    assert q.take(13) == []


def test_obstacle_events_reach_the_snapshot_with_the_other_actors_velocity():
    s, server = session()
    first = s.reset(START, 2, 0)
    npc = int(first.vehicles.ids[0])
    server.events[first.frame + 1] = [("obstacle", npc, 12.5)]
    a = s.step(VehicleControl())
    b = s.step(VehicleControl())
    assert a.obstacle is not None and (a.obstacle.other_id, a.obstacle.distance, a.obstacle.frame) == (npc, 12.5, a.frame)
    i = int(np.flatnonzero(a.vehicles.ids == npc)[0])
    np.testing.assert_allclose(a.obstacle.other_velocity, a.vehicles.velocity[i])
    assert b.obstacle is None  # no event this frame: nothing in range any more
    s.close()
    assert_clean(server)


def test_no_obstacle_sensor_when_disabled():
    s, server = session(obstacle=ObstacleSensorConfig(enabled=False))
    snap = s.reset(START, 1, 0)
    assert not [r for r in server.records.values() if r.type_id == "sensor.other.obstacle"]
    assert snap.obstacle is None
    s.close()
    assert_clean(server)


def test_collision_and_lane_invasion_events_reach_the_snapshot():
    s, server = session()
    first = s.reset(START, 2, 0)
    npc = int(first.vehicles.ids[0])
    server.events[first.frame + 1] = [("collision", npc), ("lane", ("Broken", "Solid"))]
    server.events[first.frame + 2] = [("collision", None)]
    a = s.step(VehicleControl())
    b = s.step(VehicleControl())
    c = s.step(VehicleControl())
    assert len(a.collisions) == 1 and a.collisions[0].other_id == npc
    assert a.collisions[0].other_type == server.record(npc).type_id
    assert a.collisions[0].intensity == pytest.approx(500.0)  # |(300, 400, 0)| N*s
    assert a.collisions[0].frame == a.frame
    assert a.lane_invasions[0].crossed_markings == ("Broken", "Solid")
    assert b.collisions[0].other_id == -1 and b.lane_invasions == ()
    assert c.collisions == () and c.lane_invasions == ()
    s.close()
    assert_clean(server)


# ----------------------------------------------------------------------------------------------------------
# Timeouts, reconnects, cleanup on errors and at exit


def test_tick_timeout_in_step_reconnects_and_reports_the_lost_episode():
    s, server = session()
    s.reset(START, 3, 0)
    connects = server.log.count(("load_world_if_different", "Town01", False))
    server.fail["tick"] = 1
    with pytest.raises(CarlaEpisodeLost, match="call reset"):
        s.step(VehicleControl())
    assert server.log.count(("load_world_if_different", "Town01", False)) == connects + 1  # a new connection
    assert server.alive() == []  # torn down before reconnecting
    snap = s.reset(START, 3, 0)
    s.step(VehicleControl())
    assert len(snap.vehicles) == 3
    s.close()
    assert_clean(server)


def test_dead_server_during_step_gives_a_clear_error_then_recovers_and_destroys_orphans():
    s, server = session(reconnect_retries=2)
    s.reset(START, 3, 0)
    server.down = True
    calls = server.rpc_calls
    with pytest.raises(CarlaUnavailableError, match=r"(?s)2 reconnect attempt\(s\) failed.*CarlaUE4\.sh"):
        s.step(VehicleControl())
    assert server.rpc_calls - calls <= 1 + 1 + 2  # the tick, one cleanup call, then one call per reconnect
    assert len(server.alive()) == 1 + 3 + 4  # left behind while the server was down
    server.down = False
    s.reset(START, 1, 0)  # reconnects, destroys the orphans of the same world, starts over
    assert len(server.alive()) == 1 + 1 + 4
    s.close()
    assert_clean(server)


def test_timeouts_during_reset_retry_then_give_up_cleanly():
    s, server = session(reconnect_retries=2)
    server.fail["apply_batch_sync"] = 1  # the NPC batch times out once
    snap = s.reset(START, 4, 0)
    assert len(snap.vehicles) == 4
    server.fail["spawn_actor"] = 10
    with pytest.raises(CarlaUnavailableError, match=r"(?s)reset failed 3 time\(s\).*reconnect_retries = 2"):
        s.reset(START, 4, 0)
    server.fail.clear()
    s.close()
    assert_clean(server)


def test_exception_in_the_middle_of_reset_leaves_no_actor():
    s, server = session()
    server.blueprints = [b for b in server.blueprints if b.id != "sensor.other.lane_invasion"]
    with pytest.raises(IndexError, match="lane_invasion"):
        s.reset(START, 3, 0)
    assert server.alive() == [] and server.violations == []
    s.close()
    assert_clean(server)


def test_a_sensor_that_cannot_be_stopped_is_not_destroyed_nor_its_ego():
    s, server = session()
    snap = s.reset(START, 2, 0)
    server.errors["stop"] = 1  # the first sensor's stop() fails (not a timeout)
    s.close()
    assert server.violations == []  # nothing destroyed while listening, no ego destroyed under its sensor
    still_listening = [r.id for r in server.records.values() if r.callback is not None]
    assert len(still_listening) == 1 and sorted(server.alive()) == sorted(still_listening + [snap.ego.id])
    assert any("still listening" in p for p in s.cleanup_problems)
    assert server.settings["synchronous_mode"] is False  # the settings are restored all the same


def test_open_session_is_closed_at_interpreter_exit():
    script = textwrap.dedent(
        """
        import atexit
        from fake_carla import FakeServer, make_carla
        server = FakeServer()

        @atexit.register  # registered first, so it runs after the session module's handler
        def report():
            print("ALIVE", server.alive(), "SYNC", server.settings["synchronous_mode"], "TM_RUNNING", 8000 in server.tm,
                  "VIOLATIONS", server.violations)

        from jtd3.backends.base import Pose
        from jtd3.backends.carla.config import CarlaConfig
        from jtd3.backends.carla.session import CarlaSession
        s = CarlaSession(CarlaConfig(probe=False), carla_module=make_carla(server))
        s.reset(Pose(x=317.74, y=129.49, yaw=180.0), 3, 0)
        print("SPAWNED", len(server.alive()))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SPAWNED 8" in out.stdout
    assert "ALIVE [] SYNC False TM_RUNNING False VIOLATIONS []" in out.stdout


def test_is_timeout_recognises_only_the_client_timeout():
    assert is_timeout(RuntimeError(fake_carla.TIMEOUT_MESSAGE.format(ms=5000, host="h", port=1)))
    assert not is_timeout(RuntimeError("Spawn failed because of collision at spawn position"))
    assert not is_timeout(CarlaSensorTimeout("camera: no data ... (carla.sensor_timeout_s)"))
    assert not is_timeout(TimeoutError("x"))


# ----------------------------------------------------------------------------------------------------------
# Configuration


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="carla.port"):
        CarlaConfig(port=0)
    with pytest.raises(ConfigError, match="tm_port"):
        CarlaConfig(port=2000, tm_port=2001)
    with pytest.raises(ConfigError, match="fixed_delta_seconds"):
        CarlaConfig(fixed_delta_seconds=0.5)
    with pytest.raises(ConfigError, match="camera_kind.*'front', 'birdeye'"):
        from_dict(CarlaConfig, {"camera_kind": "side"})
    with pytest.raises(ConfigError, match="ego_blueprint"):
        CarlaConfig(ego_blueprint="walker.pedestrian.0001")
    with pytest.raises(ValueError, match=r"'birdeye' is not supported on the CARLA backend.*--env sim"):
        CarlaSession(CarlaConfig(camera_kind="birdeye", probe=False), carla_module=make_carla(FakeServer()))


def test_every_config_field_is_read():
    cfg = CarlaConfig(probe=False, reconnect_backoff_s=0.0)
    with track_reads() as reads:
        server = FakeServer()
        s = CarlaSession(cfg, carla_module=make_carla(server))
        s.reset(START, 3, 0)
        s.step(VehicleControl(throttle=1.0))
        server.fail["tick"] = 1  # the reconnect path reads the reconnect settings
        with pytest.raises(CarlaEpisodeLost):
            s.step(VehicleControl())
        s.close()
    # max_consecutive_failures is the training loop's (jtd3.train.Trainer); test_config_keys covers it
    fields = {f for f in CarlaConfig.__dataclass_fields__} - {"max_consecutive_failures"}
    assert fields - {f for cls, f in reads if cls == "CarlaConfig"} == set()


# ----------------------------------------------------------------------------------------------------------
# The port probe (plain sockets; no carla client involved)


def _serve_once(reply: bytes | None, received: list[bytes]) -> tuple[int, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def run():
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(2.0)
            received.append(conn.recv(256))
            if reply is not None:
                conn.sendall(reply)
            else:
                time.sleep(0.5)  # say nothing for longer than the probe waits
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return port, t


def test_probe_accepts_a_msgpack_rpc_server_and_sends_carlas_version_call():
    msgpack = pytest.importorskip("msgpack")
    received: list[bytes] = []
    port, t = _serve_once(msgpack.packb([1, 1, None, "0.9.16"]), received)
    probe_carla_rpc("127.0.0.1", port, 1.0)
    t.join()
    assert msgpack.unpackb(received[0]) == [0, 1, "version", [[False]]]


def test_probe_refuses_a_program_that_is_not_carla():
    port, t = _serve_once(b"HTTP/1.1 400 Bad Request\r\n\r\n", [])
    with pytest.raises(CarlaError, match="is not a CARLA server") as err:
        probe_carla_rpc("127.0.0.1", port, 1.0)
    assert not isinstance(err.value, CarlaUnavailableError)
    t.join()


def test_probe_silent_program_andclosed_port():
    port, t = _serve_once(None, [])
    t0 = time.monotonic()
    with pytest.raises(CarlaUnavailableError, match="did not answer"):
        probe_carla_rpc("127.0.0.1", port, 0.3)
    assert time.monotonic() - t0 >= 0.25  # it gave the silent program its timeout
    t.join()
    port = closed_port()
    with pytest.raises(CarlaUnavailableError, match=rf"CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}") as err:
        probe_carla_rpc("127.0.0.1", port, 2.0)
    # refused at once (the connect failed), not given up after the timeout
    assert "(connect: " in str(err.value) and "did not answer" not in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# Pure conversions


def test_bgra_to_gray_weights_and_area_resize():
    h, w = 144, 256
    bgra = np.zeros((h, w, 4), np.uint8)
    bgra[..., 2] = 255  # pure red (BGRA order)
    bgra[:, : w // 2, 1] = 255  # left half yellow
    gray = bgra_to_gray(bgra.tobytes(), w, h, 84, 84)
    assert gray.shape == (84, 84) and gray.dtype == np.uint8
    assert gray[40, 10] == round(0.299 * 255 + 0.587 * 255) and gray[40, 80] == round(0.299 * 255)
    with pytest.raises(ValueError, match="expected 256x144x4"):
        bgra_to_gray(b"\x00" * 10, w, h, 84, 84)


# ----------------------------------------------------------------------------------------------------------
# The real wheel: value types and a real client against a closed port


def test_real_vehicle_control_from_action_is_clamped():
    carla = pytest.importorskip("carla")
    c = to_carla_control(carla, VehicleControl.from_action([2.0, -3.0]))
    assert isinstance(c, carla.VehicleControl)
    assert (c.steer, c.throttle, c.brake, c.hand_brake, c.reverse, c.manual_gear_shift, c.gear) == \
        (1.0, 0.0, 1.0, False, False, False, 0)
    c = to_carla_control(carla, VehicleControl.from_action([-0.25, 0.5]))
    assert (c.steer, c.throttle, c.brake) == (-0.25, 0.5, 0.0)
    with pytest.raises(TypeError):
        to_carla_control(carla, carla.VehicleControl())


def test_real_world_settings_round_trip():
    carla = pytest.importorskip("carla")
    s = sync_settings(carla.WorldSettings(), 0.05, no_rendering=False)
    assert s.synchronous_mode and s.fixed_delta_seconds == pytest.approx(0.05) and not s.no_rendering_mode
    original = carla.WorldSettings(synchronous_mode=True, fixed_delta_seconds=0.1)
    assert restored_settings(original, "original") is original
    r = restored_settings(original, "asynchronous")
    assert not r.synchronous_mode and r.fixed_delta_seconds is None
    with pytest.raises(ValueError, match="'sometimes'"):
        restored_settings(original, "sometimes")


def test_real_batch_commands():
    carla = pytest.importorskip("carla")
    cmds = destroy_commands(carla, [np.int64(7), 9])
    assert [type(c) for c in cmds] == [carla.command.DestroyActor] * 2 and [c.actor_id for c in cmds] == [7, 9]
    auto = carla.command.SetAutopilot(carla.command.FutureActor, True, 8123)
    assert auto.enabled and auto.tm_port == 8123  # the stub calls it port; the 0.9.16 wheel tm_port
    assert isinstance(carla.command.SpawnActor().then(auto), carla.command.SpawnActor)


def test_real_offline_map_round_trips_the_project_town():
    carla = pytest.importorskip("carla")
    xodr = (Path(__file__).parents[1] / "jtd3" / "data" / "Town01.xodr").read_text()
    m = carla.Map("Town01", xodr)
    assert m.to_opendrive() == xodr  # what CarlaSession.opendrive hands the environment
    wp = m.get_waypoint(carla.Location(x=START.x, y=START.y))
    assert abs(wp.transform.location.y - START.y) < 1.0 and wp.lane_width == pytest.approx(4.0)


@pytest.mark.parametrize("probe", [True, False])
def test_real_client_without_server_fails_within_the_client_timeout(probe):
    pytest.importorskip("carla")
    port = closed_port()
    cfg = CarlaConfig(port=port, tm_port=closed_port(), timeout_s=1.0, probe=probe)
    t0 = time.monotonic()
    with pytest.raises(CarlaUnavailableError) as err:
        CarlaSession(cfg)
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    if probe:
        assert "(connect: " in msg  # the probe's refused connect: the carla client never saw the port
    else:
        assert elapsed > 0.9  # the carla client waits its full timeout
        assert "time-out" in msg or "timed out" in msg, msg
    assert f"./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}" in msg and "--env sim" in msg


# ----------------------------------------------------------------------------------------------------------
# Keep the fake honest: everything it implements exists in the wheel with compatible parameter names


def _stub_tree(name: str) -> dict[str, ast.ClassDef]:
    carla = pytest.importorskip("carla")
    path = Path(carla.__file__).parent / name
    if not path.exists():
        pytest.skip(f"the carla wheel has no {name}")
    return {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)}


def _stub_members(classes: dict[str, ast.ClassDef], name: str) -> dict[str, list[ast.FunctionDef]]:
    out: dict[str, list[ast.FunctionDef]] = {}
    cls = classes[name]
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            for k, v in _stub_members(classes, base.id).items():
                out.setdefault(k, []).extend(v)
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            out.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, [])
    return out


def _decorators(fn: ast.FunctionDef) -> set[str]:
    return {ast.unparse(d) for d in fn.decorator_list}


def _stub_signatures(defs: list[ast.FunctionDef]) -> list[tuple[list[str], int]]:
    """(parameter names without self, number of required ones) of each stub overload."""
    sigs = []
    for fn in defs:
        if _decorators(fn) & {"property"} or any(d.endswith(".setter") for d in _decorators(fn)):
            continue
        args = fn.args.posonlyargs + fn.args.args
        names = [a.arg for a in args][1:]
        sigs.append((names, len(names) - len(fn.args.defaults)))
    return sigs


def _binding_signatures(real_member) -> list[tuple[list[str], int]]:
    """The same from the Boost.Python docstring of the real wheel (``argN`` = unnamed, matches any name)."""
    sigs = []
    for line in (getattr(real_member, "__doc__", None) or "").splitlines():
        m = re.match(r"\s*\w+\((.*)\)\s*->", line)
        if not m:
            continue
        params = re.findall(r"\(([^()]+)\)(\w+)(=)?", m[1])[1:]
        sigs.append(([p[1] for p in params], sum(1 for p in params if not p[2])))
    return sigs


def _compatible(fake: list[str], sigs: list[tuple[list[str], int]]) -> bool:
    for names, required in sigs:
        if len(fake) <= len(names) and len(fake) >= required and all(
            f == n or re.fullmatch(r"arg\d+", n) for f, n in zip(fake, names)
        ):
            return True
    return False


def _fake_members(cls: type) -> dict[str, object]:
    members = {k: v for k, v in vars(cls).items() if not k.startswith("_") or k == "__init__"}
    members.update({k: "slot" for k in getattr(cls, "__slots__", ())})
    return members


def _honesty_problems(stub_file: str, mirrored: dict[str, type]) -> tuple[list[str], int]:
    """What in the fake classes ``mirrored`` does not exist, or not the same way, in the wheel."""
    import carla

    classes = _stub_tree(stub_file)
    real_ns = carla if stub_file == "libcarla.pyi" else carla.command
    problems = []
    checked = 0
    for cls_name, fake_cls in mirrored.items():
        if cls_name not in classes:
            problems.append(f"{cls_name}: no such class in {stub_file}")
            continue
        stub = _stub_members(classes, cls_name)
        real_cls = getattr(real_ns, cls_name)
        for name, member in _fake_members(fake_cls).items():
            checked += 1
            where = f"{cls_name}.{name}"
            if name == "__init__":
                if "__init__" not in stub:
                    continue  # not constructible from Python: the fake's constructor is its own business
                fake_params = list(inspect.signature(member).parameters)[1:]
                if not _compatible(fake_params, _stub_signatures(stub["__init__"])):
                    problems.append(f"{where}{tuple(fake_params)} does not match the stub")
                continue
            if name not in stub:
                problems.append(f"{where}: not in {stub_file}")
                continue
            if not hasattr(real_cls, name):
                problems.append(f"{where}: not in the real wheel")
                continue
            if issubclass(fake_cls, fake_carla.enum.Enum):
                continue  # an enum member: present in the stub and in the wheel is all we ask
            real_attr = inspect.getattr_static(real_cls, name)
            is_prop = member == "slot" or isinstance(member, property)
            stub_props = [d for d in stub[name] if "property" in _decorators(d)]
            stub_setters = [d for d in stub[name] if f"{name}.setter" in _decorators(d)]
            if is_prop:
                if not stub_props:
                    problems.append(f"{where}: a property in the fake, a method in the stub")
                if not isinstance(real_attr, property):
                    problems.append(f"{where}: a property in the fake, not in the real wheel")
                if member == "slot" and not stub_setters:
                    problems.append(f"{where}: writable in the fake, read-only in the stub")
                continue
            if stub_props or isinstance(real_attr, property):
                problems.append(f"{where}: a method in the fake, a property in the stub or the wheel")
                continue
            fake_params = list(inspect.signature(member).parameters)[1:]
            stub_ok = _compatible(fake_params, _stub_signatures(stub[name]))
            real_ok = _compatible(fake_params, _binding_signatures(getattr(real_cls, name)))
            if not (stub_ok or real_ok):
                problems.append(f"{where}{tuple(fake_params)} matches neither the stub nor the binding")
    return problems, checked


@pytest.mark.parametrize(
    "stub_file, mirrored",
    [("libcarla.pyi", fake_carla.MIRRORED), ("command.pyi", fake_carla.MIRRORED_COMMANDS)],
    ids=["libcarla", "command"],
)
def test_fake_matches_the_wheel_stubs_and_bindings(stub_file, mirrored):
    pytest.importorskip("carla")
    problems, checked = _honesty_problems(stub_file, mirrored)
    assert problems == [], "\n".join(problems)
    assert checked >= 2 * len(mirrored)


def test_the_honesty_check_catches_drift():
    pytest.importorskip("carla")

    class World:
        def tick(self, timeout: float = 10.0) -> int: ...  # the wheel calls it seconds

        def frobnicate(self) -> None: ...  # no such method

        @property
        def get_settings(self): ...  # a method, not a property

        def id(self) -> int: ...  # a property, not a method

    class Sensor:
        def listen(self, callback, extra) -> None: ...  # one parameter too many

        is_listening = property(lambda self: True)  # a method in 0.9.16 (a property in old releases)

    problems, _ = _honesty_problems("libcarla.pyi", {"World": World, "Sensor": Sensor, "Wrld": World})
    joined = "\n".join(problems)
    for expected in ("World.tick", "World.frobnicate", "World.get_settings", "World.id", "Sensor.listen",
                     "Sensor.is_listening", "Wrld: no such class"):
        assert expected in joined, joined
    assert all(p.startswith(("World.", "Sensor.", "Wrld:")) for p in problems)


def test_fake_command_future_actor_matches_the_wheel():
    carla = pytest.importorskip("carla")
    assert "FutureActor" in _stub_tree("command.pyi")
    assert fake_carla.FutureActor == carla.command.FutureActor


# ----------------------------------------------------------------------------------------------------------
# carla.server_command: the real ServerProcess (a small program that answers CARLA's version probe)

_ANSWERING_SERVER = r"""
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(8)
while True:
    conn, _ = srv.accept()
    conn.recv(256)
    conn.sendall(bytes([0x94, 0x01, 0x01, 0xc0, 0xa6]) + b"0.9.16")  # msgpack [1, 1, nil, "0.9.16"]
    conn.close()
"""


def test_server_process_starts_a_server_waits_until_it_answers_and_stops_it(tmp_path):
    from jtd3.backends.carla.server_process import ServerProcess

    script = tmp_path / "answering_server.py"
    script.write_text(_ANSWERING_SERVER)
    port = closed_port()
    proc = ServerProcess(f"{sys.executable} {script} {port}", "127.0.0.1", port, start_timeout_s=60)
    proc.start()
    try:
        assert proc.alive()
        probe_carla_rpc("127.0.0.1", port, 2.0)  # answers like CARLA
    finally:
        proc.stop()
    assert not proc.alive()
    with pytest.raises(CarlaUnavailableError):
        probe_carla_rpc("127.0.0.1", port, 0.5)  # its process group is gone

    exits = ServerProcess(f"{sys.executable} -c 'raise SystemExit(7)'", "127.0.0.1", closed_port(), 60)
    with pytest.raises(CarlaUnavailableError, match="exited with code 7 before a server answered"):
        exits.start()
    silent = ServerProcess(f"{sys.executable} -c 'import time; time.sleep(60)'", "127.0.0.1", closed_port(), 1.0)
    with pytest.raises(CarlaUnavailableError, match="no CARLA server answered .* within carla.server_start_timeout_s = 1 s"):
        silent.start()
    assert not silent.alive()  # stopped after the timeout
    missing = ServerProcess("/nonexistent/CarlaUE4.sh -RenderOffScreen", "127.0.0.1", closed_port(), 1.0)
    with pytest.raises(CarlaUnavailableError, match="could not start"):
        missing.start()
