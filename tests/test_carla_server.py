"""CarlaSession against a real CARLA 0.9.16 server (skipped unless ``JTD3_CARLA_HOST`` is set).

Start a server first, e.g. ``./CarlaUE4.sh -RenderOffScreen -carla-rpc-port=2000``, then::

    JTD3_CARLA_HOST=127.0.0.1 [JTD3_CARLA_PORT=2000] [JTD3_CARLA_TM_PORT=8000] pytest -m carla_server -v

The session probes the port before the carla client touches it, so a wrong port fails with a clear error
instead of aborting pytest. These tests change the server's world (load Town01) and restore its settings.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from jtd3.backends.base import Pose, VehicleControl

HOST = os.environ.get("JTD3_CARLA_HOST", "")
pytestmark = [
    pytest.mark.carla_server,
    pytest.mark.skipif(not HOST, reason="needs a CARLA 0.9.16 server: set JTD3_CARLA_HOST (and JTD3_CARLA_PORT)"),
]

START = Pose(x=317.74, y=129.49, yaw=180.0)  # the reference route's spawn on Town01, facing west


@pytest.fixture(scope="module")
def carla():
    return pytest.importorskip("carla")


@pytest.fixture
def config():
    from jtd3.backends.carla.config import CarlaConfig

    return CarlaConfig(
        host=HOST,
        port=int(os.environ.get("JTD3_CARLA_PORT", "2000")),
        tm_port=int(os.environ.get("JTD3_CARLA_TM_PORT", "8000")),
        timeout_s=10.0,
    )


@pytest.fixture
def observer(carla, config):
    """A second client that only reads (never ticks): what the server looks like from outside."""
    client = carla.Client(config.host, config.port)
    client.set_timeout(config.timeout_s)
    return client


def test_reset_and_step_drive_the_ego_with_frame_matched_sensors(carla, config):
    from jtd3.backends.carla.session import CarlaSession

    with CarlaSession(config) as s:
        assert "<OpenDRIVE" in s.opendrive
        snap = s.reset(START, num_vehicles=5, seed=0)
        assert np.hypot(*(snap.ego.location[:2] - [START.x, START.y])) < 0.5
        assert abs((snap.ego.yaw - START.yaw + 180.0) % 360.0 - 180.0) < 2.0
        assert snap.ego.type_id == "vehicle.tesla.model3" and snap.ego.extent[0] > 1.5
        assert len(snap.vehicles) == 5 - len(s.npc_spawn_failures) >= 4
        assert snap.camera.shape == (84, 84) and snap.camera.dtype == np.uint8 and snap.camera.std() > 1.0
        frames, times, snaps = [snap.frame], [snap.timestamp], []
        for _ in range(60):
            snaps.append(s.step(VehicleControl(throttle=0.6)))
            frames.append(snaps[-1].frame)
            times.append(snaps[-1].timestamp)
        assert np.all(np.diff(frames) == 1)
        np.testing.assert_allclose(np.diff(times), config.fixed_delta_seconds, atol=1e-3)
        assert snaps[-1].ego.location[0] < START.x - 2.0  # moved west
        assert snaps[-1].ego.speed > 1.0
        assert s.sensor_stats["camera"]["stale"] + s.sensor_stats["camera"]["early"] < 5


def test_npcs_are_driven_by_the_synchronous_traffic_manager(config):
    from jtd3.backends.carla.session import CarlaSession

    with CarlaSession(config) as s:
        first = s.reset(START, num_vehicles=10, seed=1)
        for _ in range(100):
            last = s.step(VehicleControl(brake=1.0))
        common = np.intersect1d(first.vehicles.ids, last.vehicles.ids)
        a = first.vehicles.location[np.isin(first.vehicles.ids, common)]
        b = last.vehicles.location[np.isin(last.vehicles.ids, common)]
        moved = np.hypot(*(b - a)[:, :2].T)
        assert (moved > 1.0).sum() >= len(common) // 2, moved  # frozen NPCs = TM not in synchronous mode


def test_same_seed_same_npcs(config):
    from jtd3.backends.carla.session import CarlaSession

    with CarlaSession(config) as s:
        a = s.reset(START, num_vehicles=8, seed=5)
        b = s.reset(START, num_vehicles=8, seed=5)
    key = lambda snap: sorted(map(tuple, snap.vehicles.location[:, :2].round(1)))  # noqa: E731
    assert key(a) == key(b)


def test_steering_across_the_centre_line_reports_a_lane_invasion(config):
    from jtd3.backends.carla.session import CarlaSession

    with CarlaSession(config) as s:
        s.reset(START, num_vehicles=0, seed=0)
        events = []
        for _ in range(80):
            snap = s.step(VehicleControl(throttle=0.5, steer=-0.4))
            events += snap.lane_invasions
            if events:
                break
    assert events and events[0].crossed_markings


def test_close_restores_the_settings_and_leaves_no_actor(carla, config, observer):
    from jtd3.backends.carla.session import CarlaSession

    s = CarlaSession(config)
    world = observer.get_world()
    before = world.get_settings()  # the session's own settings now; what it found is s._original_settings
    assert before.synchronous_mode and before.fixed_delta_seconds == pytest.approx(config.fixed_delta_seconds)
    found = s._original_settings
    snap = s.reset(START, num_vehicles=5, seed=2)
    s.step(VehicleControl(throttle=0.5))
    ours = [snap.ego.id, *snap.vehicles.ids.tolist()]
    sensors = [a.id for a in world.get_actors().filter("sensor.*") if a.parent and a.parent.id == snap.ego.id]
    assert len(sensors) == 3
    s.close()
    after = observer.get_world().get_settings()
    assert after.synchronous_mode == found.synchronous_mode
    assert after.fixed_delta_seconds == found.fixed_delta_seconds
    assert len(observer.get_world().get_actors(ours + sensors)) == 0
    assert s.cleanup_problems == []


def test_a_second_session_after_close_finds_a_live_server(config):
    from jtd3.backends.carla.session import CarlaSession

    for seed in range(2):
        with CarlaSession(config) as s:
            s.reset(START, num_vehicles=2, seed=seed)
            s.step(VehicleControl())
