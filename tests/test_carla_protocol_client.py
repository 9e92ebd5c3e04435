"""The unmodified carla 0.9.16 client against the jtd3 server (a child process on 127.0.0.1, free ports).

The wheel's Python API is the oracle: what it decodes from the server's replies and streams must be exactly
what the embedded simulator computed (poses, velocities, controls and images are recomputed here with
jtd3.backends.sim and compared), so every streamed layout and msgpack shape is checked end to end.
"""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from jtd3 import DATA_DIR
from jtd3.backends.base import VehicleControl
from jtd3.backends.sim import dynamics
from jtd3.backends.sim.config import CameraConfig, SimConfig
from jtd3.backends.sim.events import relative_impulse
from jtd3.backends.sim.render import FrontCamera, build_town_raster
from jtd3.carla_server.process import ServerProcess
from jtd3.roads.towns import load_town

carla = pytest.importorskip("carla")

START = (317.74, 129.49, 180.0)  # the reference route's start on Town01, facing west


@pytest.fixture(scope="module")
def server():
    with ServerProcess() as srv:
        yield srv


@pytest.fixture(scope="module")
def world(server):
    client = carla.Client("127.0.0.1", server.port)
    client.set_timeout(5.0)
    world = client.get_world()
    settings = world.get_settings()
    settings.synchronous_mode = True
    settings.fixed_delta_seconds = 0.05
    world.apply_settings(settings)
    yield world
    client.get_world().apply_settings(carla.WorldSettings(synchronous_mode=False))  # the episode may have changed


@pytest.fixture
def actors(world):
    """Actors a test spawns; destroyed (sensors stopped first) afterwards, and with them any vehicle or sensor the
    client never got back (a spawn whose reply timed out), so one failed test cannot fail the next ones' spawns."""
    spawned = []
    yield spawned
    for a in reversed(spawned):
        if a.type_id.startswith("sensor.") and a.is_listening():
            a.stop()
        a.destroy()
    for a in world.get_actors():
        if a.type_id.startswith(("vehicle.", "sensor.")):
            a.destroy()
    world.tick()


def _spawn(world, actors, type_id, x, y, yaw, z=0.5):
    bp = world.get_blueprint_library().find(type_id)
    a = world.spawn_actor(bp, carla.Transform(carla.Location(x=x, y=y, z=z), carla.Rotation(yaw=yaw)))
    actors.append(a)
    return a


def _f32(v):
    return float(np.float32(v))


def test_version_map_and_opendrive(server):
    client = carla.Client("127.0.0.1", server.port)
    client.set_timeout(5.0)
    assert client.get_server_version() == client.get_client_version() == "0.9.16"
    world = client.get_world()
    m = world.get_map()
    assert m.name == "Carla/Maps/Town01"
    assert m.to_opendrive() == (DATA_DIR / "Town01.xodr").read_text(encoding="utf-8")
    spawns = m.get_spawn_points()
    assert len(spawns) > 50
    for tf in spawns[:: max(len(spawns) // 10, 1)]:  # CARLA's own map code puts them on driving lanes
        wp = m.get_waypoint(tf.location, project_to_road=False)
        assert wp is not None and wp.lane_type == carla.LaneType.Driving
        assert abs((wp.transform.rotation.yaw - tf.rotation.yaw + 180) % 360 - 180) < 5
    assert client.get_available_maps() == ["Carla/Maps/Town01"]


def test_settings_round_trip_every_field(world):
    s = world.get_settings()
    assert s.synchronous_mode and s.fixed_delta_seconds == pytest.approx(0.05)
    s.no_rendering_mode, s.substepping, s.max_substep_delta_time, s.max_substeps = True, False, 0.02, 7
    s.max_culling_distance, s.deterministic_ragdolls = 123.5, False
    s.tile_stream_distance, s.actor_active_distance, s.spectator_as_ego = 456.0, 789.0, False
    world.apply_settings(s)
    r = world.get_settings()
    for name in ("synchronous_mode", "no_rendering_mode", "fixed_delta_seconds", "substepping",
                 "max_substep_delta_time", "max_substeps", "max_culling_distance", "deterministic_ragdolls",
                 "tile_stream_distance", "actor_active_distance", "spectator_as_ego"):
        assert getattr(r, name) == pytest.approx(getattr(s, name)), name
    world.apply_settings(carla.WorldSettings(synchronous_mode=True, fixed_delta_seconds=0.05))
    assert world.get_settings().no_rendering_mode is False


def test_blueprint_library(world):
    lib = world.get_blueprint_library()
    ego = lib.find("vehicle.tesla.model3")
    assert ego.has_attribute("role_name") and ego.get_attribute("number_of_wheels").as_int() == 4
    assert not ego.get_attribute("number_of_wheels").is_modifiable
    assert len(ego.get_attribute("color").recommended_values) > 1
    ego.set_attribute("color", ego.get_attribute("color").recommended_values[2])
    cam = lib.find("sensor.camera.rgb")
    assert {a.id for a in cam} >= {"image_size_x", "image_size_y", "fov", "sensor_tick"}
    assert cam.get_attribute("fov").as_float() == 90.0
    npcs = SimConfig().npc.blueprints
    assert {b.id for b in lib.filter("vehicle.*")} == {"vehicle.tesla.model3", *npcs}
    assert {b.id for b in lib.filter("sensor.other.*")} == {
        "sensor.other.collision", "sensor.other.lane_invasion", "sensor.other.obstacle"}


def test_spawn_state_and_controls_match_the_embedded_dynamics(world, actors):
    sim = SimConfig()
    ego = _spawn(world, actors, "vehicle.tesla.model3", *START)
    assert ego.type_id == "vehicle.tesla.model3" and ego.attributes["role_name"] == "autopilot"
    v = sim.vehicle
    assert [ego.bounding_box.extent.x, ego.bounding_box.extent.y, ego.bounding_box.extent.z] == pytest.approx(
        [v.length / 2, v.width / 2, v.height / 2], abs=1e-6)
    with pytest.raises(RuntimeError, match="collision at spawn position"):
        _spawn(world, actors, "vehicle.audi.a2", START[0] - 1.0, START[1], START[2])
    frame = world.tick()
    state = dynamics.EgoState(_f32(START[0]), _f32(START[1]), START[2])  # the client sends float32
    state = dynamics.step(state, VehicleControl(), v, 0.05)
    controls = [carla.VehicleControl(throttle=0.8), carla.VehicleControl(throttle=0.5, steer=0.3),
                carla.VehicleControl(brake=0.4, steer=-0.2, hand_brake=True)]
    for control in controls:
        ego.apply_control(control)
        for _ in range(5):
            frame = world.tick()
            state = dynamics.step(state, VehicleControl(throttle=_f32(control.throttle), steer=_f32(control.steer),
                                                        brake=_f32(control.brake), hand_brake=control.hand_brake), v, 0.05)
        snap = world.get_snapshot()
        assert snap.frame == frame and snap.timestamp.delta_seconds == pytest.approx(0.05)
        s = snap.find(ego.id)
        tf, vel, acc, ang = s.get_transform(), s.get_velocity(), s.get_acceleration(), s.get_angular_velocity()
        assert [tf.location.x, tf.location.y, tf.location.z] == [_f32(state.x), _f32(state.y), 0.0]
        assert [tf.rotation.pitch, tf.rotation.roll] == [0.0, 0.0]
        assert tf.rotation.yaw == pytest.approx((state.yaw + 180) % 360 - 180, abs=1e-4)
        assert [vel.x, vel.y, vel.z] == [_f32(state.vx), _f32(state.vy), 0.0]
        assert [acc.x, acc.y, acc.z] == [_f32(state.ax), _f32(state.ay), 0.0]
        assert [ang.x, ang.y, ang.z] == [0.0, 0.0, _f32(state.yaw_rate)]
        got = ego.get_control()  # read from the vehicle part of the streamed ActorDynamicState
        assert (got.throttle, got.steer, got.brake, got.hand_brake) == (
            pytest.approx(control.throttle), pytest.approx(control.steer), pytest.approx(control.brake),
            control.hand_brake)
        assert (got.reverse, got.manual_gear_shift, got.gear) == (False, False, 0)
    assert ego.get_speed_limit() == pytest.approx(25 * 1.609344, abs=1e-3)  # Town01: 25 mph everywhere
    # the rest of the vehicle part of the state: no traffic light, no failure; the actor is active
    assert ego.get_traffic_light_state() == carla.TrafficLightState.Unknown and not ego.is_at_traffic_light()
    assert ego.get_failure_state() == carla.VehicleFailureState.NONE
    assert ego.actor_state == carla.ActorState.Active
    assert abs(snap.timestamp.platform_timestamp - time.time()) < 60.0  # the f64 after the episode id
    assert snap.timestamp.elapsed_seconds == pytest.approx(frame * 0.05)  # the frame counter starts at 0, dt fixed


def test_camera_frame_matches_the_tick_and_the_embedded_render(world, actors):
    ego = _spawn(world, actors, "vehicle.tesla.model3", *START)
    _spawn(world, actors, "vehicle.nissan.patrol", START[0] - 20.0, START[1], START[2])  # in view
    bp = world.get_blueprint_library().find("sensor.camera.rgb")
    for k, val in (("image_size_x", "96"), ("image_size_y", "64"), ("fov", "100")):
        bp.set_attribute(k, val)
    cam = world.spawn_actor(bp, carla.Transform(carla.Location(x=1.6, z=1.5), carla.Rotation(pitch=-5.0)), attach_to=ego)
    actors.append(cam)
    assert cam.parent.id == ego.id
    images = queue.Queue()
    cam.listen(images.put)
    frames = [world.tick() for _ in range(3)]
    got = [images.get(timeout=5.0) for _ in frames]
    assert [i.frame for i in got] == frames
    image = got[-1]
    assert (image.width, image.height, image.fov) == (96, 64, 100.0)
    assert image.timestamp == pytest.approx(frames[-1] * 0.05)
    assert image.transform.location.x == pytest.approx(START[0] - 1.6, abs=1e-4)
    assert image.transform.location.z == pytest.approx(1.5) and image.transform.rotation.pitch == pytest.approx(-5.0)
    bgra = np.frombuffer(image.raw_data, np.uint8).reshape(64, 96, 4)
    assert np.all(bgra[..., 3] == 255) and np.all(bgra[..., 0] == bgra[..., 1]) and np.all(bgra[..., 1] == bgra[..., 2])
    sim = SimConfig()
    raster = build_town_raster(load_town("town01"), sim.render)
    camera = FrontCamera(CameraConfig(width=96, height=64, fov=100.0, x=1.6, z=1.5, pitch=-5.0), sim.render, raster, 96, 64)
    s = world.get_snapshot()
    npc = [a for a in world.get_actors().filter("vehicle.nissan.*")][0]
    t = s.find(npc.id).get_transform()
    from jtd3.backends.base import Vehicles  # noqa: PLC0415

    others = Vehicles(ids=np.array([npc.id]), location=np.array([[t.location.x, t.location.y, 0.0]]),
                      yaw=np.array([t.rotation.yaw]), velocity=np.zeros((1, 3)),
                      extent=np.array([[npc.bounding_box.extent.x, npc.bounding_box.extent.y, npc.bounding_box.extent.z]]))
    e = s.find(ego.id).get_transform()
    expected = camera.render(e.location.x, e.location.y, e.rotation.yaw, others)
    assert np.mean(np.abs(expected.astype(int) - bgra[..., 0])) < 1.0  # poses differ by float32 rounding only
    assert bgra[..., 0].std() > 5.0
    cam.stop()


def test_collision_event_and_stop(world, actors):
    sim = SimConfig()
    ego = _spawn(world, actors, "vehicle.tesla.model3", *START)
    npc = _spawn(world, actors, "vehicle.audi.a2", START[0] - 8.0, START[1], START[2])
    col = world.spawn_actor(world.get_blueprint_library().find("sensor.other.collision"), carla.Transform(), attach_to=ego)
    actors.append(col)
    events = queue.Queue()
    col.listen(events.put)
    ego.apply_control(carla.VehicleControl(throttle=1.0))
    moved = False
    for _ in range(100):  # until the ego, having moved, stands still again: the collision put it back
        frame = world.tick()
        v = world.get_snapshot().find(ego.id).get_velocity()
        if moved and v.x == 0.0:
            break
        moved = moved or v.x != 0.0
    event = events.get(timeout=5.0)
    assert event.frame == frame
    assert event.actor.id == ego.id and event.other_actor.id == npc.id and event.other_actor.type_id == "vehicle.audi.a2"
    impulse = np.array([event.normal_impulse.x, event.normal_impulse.y, event.normal_impulse.z])
    speed_before = world.get_snapshot().find(ego.id).get_velocity()
    assert (speed_before.x, speed_before.y) == (0.0, 0.0)  # put back and stopped, as the embedded simulator does
    assert impulse[0] > 0 and abs(impulse[1]) < 1e-6 * impulse[0]  # against the motion (driving west, -x)
    m = sim.vehicle.mass * sim.npc.mass / (sim.vehicle.mass + sim.npc.mass)
    assert np.linalg.norm(impulse) > m * 1.0  # at least 1 m/s relative speed
    assert relative_impulse(np.array([np.linalg.norm(impulse) / m, 0, 0]), np.zeros(3), sim.vehicle.mass,
                            sim.npc.mass) == pytest.approx(np.linalg.norm(impulse), rel=1e-5)
    col.stop()


def test_obstacle_event_reports_the_vehicle_ahead_and_its_sweep_distance(world, actors):
    sim = SimConfig()
    ego = _spawn(world, actors, "vehicle.tesla.model3", *START)
    npc = _spawn(world, actors, "vehicle.audi.a2", START[0] - 15.0, START[1] + 0.3, START[2])
    lib = world.get_blueprint_library()
    bp = lib.find("sensor.other.obstacle")
    assert bp.get_attribute("only_dynamics").as_bool() is False  # CARLA's default, which this server refuses
    ego_hl = 0.5 * sim.vehicle.length
    mount = carla.Transform(carla.Location(x=ego_hl, z=1.0))
    with pytest.raises(RuntimeError, match="detects vehicles only"):
        actors.append(world.spawn_actor(bp, mount, attach_to=ego))
    for key, value in (("only_dynamics", "true"), ("distance", "40"), ("hit_radius", "1.0")):
        bp.set_attribute(key, value)
    sensor = world.spawn_actor(bp, mount, attach_to=ego)
    actors.append(sensor)
    events = queue.Queue()
    sensor.listen(events.put)
    frame = world.tick()
    event = events.get(timeout=5.0)
    assert event.frame == frame and event.actor.id == ego.id and event.other_actor.id == npc.id
    npc_hl = sim.npc.extents[sim.npc.blueprints.index("vehicle.audi.a2")][0]
    # the sphere (radius 1) touches the NPC's rear face, 0.3 m off the centre line: 15 - both half lengths - 1
    assert event.distance == pytest.approx(15.0 - ego_hl - npc_hl - 1.0, abs=1e-4)
    npc.destroy()
    actors.remove(npc)
    world.tick()
    world.tick()
    time.sleep(0.2)
    while not events.empty():  # nothing in range: the sensor stays quiet
        assert events.get().frame < frame + 1
    sensor.stop()


def test_lane_invasion_is_computed_by_the_client(world, actors):
    ego = _spawn(world, actors, "vehicle.tesla.model3", *START)
    lane = world.spawn_actor(world.get_blueprint_library().find("sensor.other.lane_invasion"), carla.Transform(),
                             attach_to=ego)
    actors.append(lane)
    events = queue.Queue()
    lane.listen(events.put)
    world.tick()
    ego.apply_control(carla.VehicleControl(throttle=0.5, steer=-0.4))
    event = None
    for _ in range(80):
        frame = world.tick()
        try:
            event = events.get(timeout=0.05)
            break
        except queue.Empty:
            pass
    assert event is not None and frame - 1 <= event.frame <= frame
    assert [str(m.type) for m in event.crossed_lane_markings] == ["Broken"]  # Town01's centre line
    lane.stop()


def test_destroy_and_actor_list(world):
    ego = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"),
                            carla.Transform(carla.Location(x=START[0], y=START[1], z=0.5), carla.Rotation(yaw=START[2])))
    cam = world.spawn_actor(world.get_blueprint_library().find("sensor.camera.rgb"), carla.Transform(), attach_to=ego)
    world.tick()
    ids = {a.id: a.type_id for a in world.get_actors()}
    assert ids[ego.id] == "vehicle.tesla.model3" and ids[cam.id] == "sensor.camera.rgb" and "spectator" in ids.values()
    assert cam.destroy() and ego.destroy()
    world.tick()
    snap = world.get_snapshot()
    assert not snap.has_actor(ego.id) and not snap.has_actor(cam.id)
    assert {ego.id, cam.id}.isdisjoint(a.id for a in world.get_actors())
    # The client caches actor descriptions and never drops destroyed ones (LibCarla Episode::GetActorsById):
    # asking for them by id still returns them, with a real CARLA server too.
    assert len(world.get_actors([ego.id, cam.id])) == 2
    with pytest.raises(RuntimeError, match="destroyed actor"):  # the client knows
        ego.destroy()


def test_unserved_calls_raise_in_the_client(world, server):
    with pytest.raises(RuntimeError, match="not supported by the jtd3 CARLA server"):
        world.get_names_of_all_objects()
    with pytest.raises(RuntimeError, match="not found"):
        carla.Client("127.0.0.1", server.port).load_world("Town02")
    assert server.control("jtd3.calls")["get_names_of_all_objects"] == 1
    bp = world.get_blueprint_library().find("sensor.camera.rgb")
    bp.set_attribute("fov", "175")
    with pytest.raises(RuntimeError, match="camera not supported by this server.*fov"):
        world.spawn_actor(bp, carla.Transform())
    bp.set_attribute("fov", "90")
    with pytest.raises(RuntimeError, match="camera mount .* yaw = 180.* not supported"):
        world.spawn_actor(bp, carla.Transform(carla.Location(x=-2.0, z=1.5), carla.Rotation(yaw=180.0)))


def test_asynchronous_mode_runs_by_itself(world):
    world.apply_settings(carla.WorldSettings(synchronous_mode=False, fixed_delta_seconds=0.05))
    try:
        first = world.wait_for_tick(5.0)
        later = world.wait_for_tick(5.0)
        assert later.frame > first.frame
    finally:
        world.apply_settings(carla.WorldSettings(synchronous_mode=True, fixed_delta_seconds=0.05))


def test_load_and_reload_world_start_a_new_episode(world, server):  # last: the module's world object expires
    client = carla.Client("127.0.0.1", server.port)
    client.set_timeout(5.0)
    ego = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"),
                            carla.Transform(carla.Location(x=START[0], y=START[1], z=0.5), carla.Rotation(yaw=START[2])))
    frame = world.tick()
    new = client.load_world("Town01", reset_settings=False)
    assert new.id == world.id + 1 and new.get_settings().synchronous_mode
    assert new.tick() > frame  # the frame counter goes on across episodes
    # Listed from the client's latest world state: after a tick of the new episode (right after load_world this
    # client's state can still be one without actors; seen once in 10 runs).
    assert [a.type_id for a in new.get_actors()] == ["spectator"]
    assert not new.get_snapshot().has_actor(ego.id)
    again = client.reload_world()  # reset_settings defaults to True
    assert again.id == new.id + 1 and not again.get_settings().synchronous_mode
