"""The failures tests/fake_carla.py injects into a Python fake of ``carla``, injected here at the protocol level:
the real client and jtd3's CarlaSession against a server that leaves a tick unanswered, drops, delays or
duplicates sensor frames, or dies.

What each covers: the fake reaches corners the wire cannot show (a timeout in any chosen RPC, refused spawns
of single NPCs, cleanup ordering recorded call by call); these tests show the real client's behaviour on the
same failures (its timeouts, its frame delivery, its Traffic Manager), which the fake can only imitate.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jtd3.backends.base import Pose, VehicleControl
from jtd3.backends.carla.config import CarlaConfig
from jtd3.backends.carla.errors import CarlaEpisodeLost, CarlaSensorTimeout
from jtd3.backends.carla.session import CarlaSession

carla = pytest.importorskip("carla")

from carla_protocol_fixtures import free_port

START = Pose(x=317.74, y=129.49, yaw=180.0)
NO_FAULTS = ({}, {}, {}, [])


@pytest.fixture
def session(server):
    cfg = CarlaConfig(port=server.port, tm_port=server.tm_port, timeout_s=2.0, tick_timeout_s=2.0, reconnect_retries=1,
                      reconnect_backoff_s=0.0, sensor_timeout_s=1.0)
    s = CarlaSession(cfg)
    s.reset(START, num_vehicles=2, seed=0)
    yield s
    server.control("jtd3.faults", *NO_FAULTS)
    s.close()


def test_a_tick_that_never_comes_loses_the_episode_then_reset_works(session, server):
    server.control("jtd3.faults", {"tick_cue": 1}, {}, {}, [])
    with pytest.raises(CarlaEpisodeLost, match="timed out during step"):
        session.step(VehicleControl(throttle=0.5))
    snap = session.reset(START, num_vehicles=2, seed=0)  # reconnected: a fresh episode
    assert session.step(VehicleControl()).frame == snap.frame + 1
    assert server.control("jtd3.calls")["tick_cue"] >= 4


def test_a_missing_camera_frame_is_a_sensor_timeout(session, server):
    frame = session.step(VehicleControl()).frame
    server.control("jtd3.faults", {}, {"sensor.camera.rgb": [frame + 2]}, {}, [])
    assert session.step(VehicleControl()).frame == frame + 1
    with pytest.raises(CarlaSensorTimeout, match=f"camera: no data for frame {frame + 2}"):
        session.step(VehicleControl())
    server.control("jtd3.faults", *NO_FAULTS)
    snap = session.reset(START, num_vehicles=0, seed=1)
    assert snap.camera.std() > 1.0


def test_a_missing_world_state_makes_the_tick_time_out(session, server):
    frame = session.step(VehicleControl()).frame
    server.control("jtd3.faults", {}, {"world": [frame + 1]}, {}, [])
    with pytest.raises(CarlaEpisodeLost):  # world.tick() waits for the pushed state of its frame
        session.step(VehicleControl())


def test_late_and_duplicated_frames_are_matched_on_their_frame(session, server):
    server.control("jtd3.faults", {}, {}, {"sensor.camera.rgb": 0.12}, ["sensor.camera.rgb"])
    snaps = [session.step(VehicleControl(throttle=0.5)) for _ in range(8)]
    assert np.all(np.diff([s.frame for s in snaps]) == 1)
    stats = session.sensor_stats["camera"]
    assert stats["stale"] >= 6  # every second copy arrives after its frame was taken and is dropped
    assert stats["early"] == 0


SERVER_DIES = textwrap.dedent("""
    import sys, threading, time
    from jtd3.backends.base import Pose, VehicleControl
    from jtd3.backends.carla.config import CarlaConfig
    from jtd3.backends.carla.errors import CarlaUnavailableError
    from jtd3.backends.carla.session import CarlaSession
    from jtd3.carla_server.process import ServerProcess
    srv = ServerProcess()
    cfg = CarlaConfig(port=srv.port, tm_port=int(sys.argv[1]), timeout_s=2.0, tick_timeout_s=2.0, reconnect_retries=1,
                      reconnect_backoff_s=0.0, sensor_timeout_s=1.0)
    s = CarlaSession(cfg)
    s.reset(Pose(x=317.74, y=129.49, yaw=180.0), num_vehicles=2, seed=0)
    s.step(VehicleControl(throttle=0.5))
    srv.control("jtd3.faults", {"tick_cue": -1}, {}, {}, [])
    threading.Timer(0.3, srv.kill).start()  # dies while the client waits for its tick
    t = time.monotonic()
    try:
        s.step(VehicleControl(throttle=0.5))
    except CarlaUnavailableError as e:
        print("unavailable after", round(time.monotonic() - t, 1), "s:", str(e).splitlines()[0])
    s.close()
    print("closed; problems:", len(s.cleanup_problems))
""")


@pytest.mark.slow  # a child process with its own server: about 10 s
def test_a_server_that_dies_makes_the_session_unavailable():
    # In a child process: the carla client aborts its process when a call on the Traffic Manager's thread
    # fails, which a dead server can provoke; the session itself must fail cleanly when it sees the death.
    out = subprocess.run([sys.executable, "-c", SERVER_DIES, str(free_port())], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "unavailable after" in out.stdout and "lost the CARLA server" in out.stdout, out.stdout
    assert "closed; problems:" in out.stdout


def test_the_server_compiles_the_simulators_loops_before_it_listens():
    # On a fresh install the loops compile on first use (seconds); inside a client's first spawn_actor or tick
    # that exceeds the client's timeout. The server's start-up rehearsal (jtd3.carla_server.world.rehearse)
    # must run every compiled entry point the served world uses. A fresh process, so other tests' calls count not.
    code = textwrap.dedent("""
        from jtd3.backends import obstacle
        from jtd3.backends.sim import render_kernels
        from jtd3.carla_server.server import CarlaServer
        from jtd3.roads import projection
        kernels = {"nearest_samples": projection.nearest_samples, "project_chords": projection.project_chords,
                   "ground": render_kernels.ground, "box_faces": render_kernels.box_faces,
                   "classes_at": render_kernels.classes_at, "sweep": obstacle._sweep}
        assert not any(k.signatures for k in kernels.values())
        server = CarlaServer(port=0)
        print(sorted(name for name, k in kernels.items() if not k.signatures))
        server.close()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"not compiled before the server listened: {out.stdout}"
