"""A fake CARLA 0.9.16 server and ``carla`` client module for testing ``jtd3.backends.carla.session`` offline.

``make_carla(server)`` returns a namespace that stands in for the ``carla`` module; every class in it mirrors a
class of the real wheel, with the same method and parameter names (``tests/test_carla_session.py`` checks
them against the wheel's type stubs ``carla/libcarla.pyi`` / ``carla/command.pyi`` and its binding signatures,
so the fake cannot drift into an API CARLA does not have). Fake-only controls live on :class:`FakeServer`:

- ``server.log``: every server-visible call in order, e.g. ``("spawn", id, type_id)``, ``("listen", id)``,
  ``("stop", id)``, ``("destroy", id)``, ``("tick", frame)``, ``("apply_settings", {...})``,
  ``("tm_sync", port, bool)``, ``("tm_shut_down", port)``, ``("tm_seed", port, seed)``, ``("load_world", town)``.
- ``server.violations``: things that crash or freeze a real server (a sensor destroyed while listening,
  a tick outside synchronous mode, a control applied to a dead actor ...). Tests assert it stays empty.
- ``server.down`` (every RPC times out), ``server.fail[name] = n`` (the next n calls of RPC ``name`` time
  out), ``server.errors[name] = n`` (they raise another ``RuntimeError``), ``server.refuse_spawns = n`` (the
  next n ``try_spawn_actor`` return None).
- ``server.plans[kind]`` for kind in ``"camera"``, ``"world"``: ``plan(frame) -> [(delay_s, label), ...]``,
  the frames delivered after tick ``frame`` (delay 0: before ``tick`` returns; > 0: later, from a timer
  thread, as CARLA's streaming threads do). The default delivers ``[(0.0, frame)]``. Camera pixels encode
  the label (``label % 251``), so a test sees which frame was used.
- ``server.events[frame]``: ``[("collision", other_id), ("lane", ("Broken",)), ("obstacle", other_id, distance), ...]``
  raised at that frame.
- ``server.down_rpcs = n``: the next n RPCs of any name time out (a server gone for a while, then back).
- ``server.at_tick[n] = hook``: ``hook(server)`` runs when the n-th ``tick`` RPC arrives, before it is served
  (fault injection at a chosen moment of a training run).
- ``server.tm_deadlocks = n``: the next n ``world.tick()`` calls hang after the server's tick, as carla 0.9.16's
  Traffic Manager does when a notification is lost, until a Traffic Manager's synchronous mode is switched off
  (``server.tm_woken`` counts those wake-ups; a hang raises after 30 s so a broken test cannot block forever).
- ``server.tm_rpc = True``: a Traffic Manager created afterwards also serves ``set_synchronous_mode`` over
  msgpack-rpc on a free port (its ``get_port()``), as the real one's ``TrafficManagerServer`` does.
- ``server.restart()``: what a crashed and restarted server looks like: no actors, default (asynchronous)
  settings, a new world id, no Traffic Manager state, answering again.

Physics is a toy (the ego follows throttle/brake/steer, autopilot NPCs drive straight at 5 m/s); positions
read as the origin until the first tick after spawning, as on a real server.
"""

from __future__ import annotations

import collections
import enum
import fnmatch
import itertools
import math
import socket
import threading
import types
from typing import Any, Callable

import msgpack

TIMEOUT_MESSAGE = (
    "time-out of {ms}ms while waiting for the simulator, make sure the simulator is ready and connected to "
    "{host}:{port}"
)


# ----------------------------------------------------------------------------------------------------------
# Value types


class Vector3D:
    __slots__ = ("x", "y", "z")

    def __init__(self, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> None:
        self.x, self.y, self.z = float(x), float(y), float(z)


class Location(Vector3D):
    __slots__ = ()

    def distance(self, location: Location) -> float:
        return math.dist((self.x, self.y, self.z), (location.x, location.y, location.z))


class Rotation:
    __slots__ = ("pitch", "yaw", "roll")

    def __init__(self, pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0) -> None:
        self.pitch, self.yaw, self.roll = float(pitch), float(yaw), float(roll)


class Transform:
    __slots__ = ("location", "rotation")

    def __init__(self, location: Location | None = None, rotation: Rotation | None = None) -> None:
        self.location = location if location is not None else Location()
        self.rotation = rotation if rotation is not None else Rotation()


def _copy_transform(t: Transform) -> Transform:
    return Transform(Location(t.location.x, t.location.y, t.location.z),
                     Rotation(t.rotation.pitch, t.rotation.yaw, t.rotation.roll))


class BoundingBox:
    def __init__(self, location: Location, extent: Vector3D) -> None:
        self._location, self._extent = location, extent

    @property
    def location(self) -> Location:
        return self._location

    @property
    def extent(self) -> Vector3D:
        return self._extent


class VehicleControl:
    __slots__ = ("throttle", "steer", "brake", "hand_brake", "reverse", "manual_gear_shift", "gear")

    def __init__(self, throttle: float = 0.0, steer: float = 0.0, brake: float = 0.0, hand_brake: bool = False,
                 reverse: bool = False, manual_gear_shift: bool = False, gear: int = 0) -> None:
        self.throttle, self.steer, self.brake = float(throttle), float(steer), float(brake)
        self.hand_brake, self.reverse, self.manual_gear_shift, self.gear = hand_brake, reverse, manual_gear_shift, gear


class WorldSettings:
    __slots__ = ("synchronous_mode", "no_rendering_mode", "fixed_delta_seconds", "substepping",
                 "max_substep_delta_time", "max_substeps")

    def __init__(self, synchronous_mode: bool = False, no_rendering_mode: bool = False,
                 fixed_delta_seconds: float = 0.0) -> None:
        self.synchronous_mode = synchronous_mode
        self.no_rendering_mode = no_rendering_mode
        self.fixed_delta_seconds = fixed_delta_seconds or None  # the wheel reads 0.0 back as None
        self.substepping, self.max_substep_delta_time, self.max_substeps = True, 0.01, 10


def _settings_dict(s: WorldSettings) -> dict:
    return {k: getattr(s, k) for k in WorldSettings.__slots__}


def _settings_from(d: dict) -> WorldSettings:
    s = WorldSettings()
    for k, v in d.items():
        setattr(s, k, v)
    return s


class Timestamp:
    def __init__(self, frame: int, elapsed_seconds: float, delta_seconds: float, platform_timestamp: float) -> None:
        self._values = (frame, elapsed_seconds, delta_seconds, platform_timestamp)

    @property
    def frame(self) -> int:
        return self._values[0]

    @property
    def elapsed_seconds(self) -> float:
        return self._values[1]

    @property
    def delta_seconds(self) -> float:
        return self._values[2]

    @property
    def platform_timestamp(self) -> float:
        return self._values[3]


class LaneMarkingType(enum.IntEnum):
    Other = 0
    Broken = 1
    Solid = 2
    SolidSolid = 3


class LaneMarking:
    def __init__(self, kind: LaneMarkingType) -> None:
        self._type = kind

    @property
    def type(self) -> LaneMarkingType:
        return self._type


# ----------------------------------------------------------------------------------------------------------
# Sensor data


class SensorData:
    def __init__(self, frame: int, timestamp: float, transform: Transform) -> None:
        self._frame, self._timestamp, self._transform = frame, timestamp, transform

    @property
    def frame(self) -> int:
        return self._frame

    @property
    def timestamp(self) -> float:
        return self._timestamp

    @property
    def transform(self) -> Transform:
        return self._transform


class Image(SensorData):
    def __init__(self, frame: int, timestamp: float, transform: Transform, width: int, height: int,
                 fov: float) -> None:
        super().__init__(frame, timestamp, transform)
        self._width, self._height, self._fov = width, height, fov
        self._raw = bytes([frame % 251, frame % 251, frame % 251, 255]) * (width * height)  # BGRA, uniform gray

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    @property
    def fov(self) -> float:
        return self._fov

    @property
    def raw_data(self) -> bytes:
        return self._raw


class CollisionEvent(SensorData):
    def __init__(self, frame: int, timestamp: float, transform: Transform, actor: Actor, other: Actor | None,
                 impulse: Vector3D) -> None:
        super().__init__(frame, timestamp, transform)
        self._actor, self._other, self._impulse = actor, other, impulse

    @property
    def actor(self) -> Actor:
        return self._actor

    @property
    def other_actor(self) -> Actor | None:
        return self._other

    @property
    def normal_impulse(self) -> Vector3D:
        return self._impulse


class ObstacleDetectionEvent(SensorData):
    def __init__(self, frame: int, timestamp: float, transform: Transform, actor: Actor, other: Actor,
                 distance: float) -> None:
        super().__init__(frame, timestamp, transform)
        self._actor, self._other, self._distance = actor, other, distance

    @property
    def actor(self) -> Actor:
        return self._actor

    @property
    def other_actor(self) -> Actor:
        return self._other

    @property
    def distance(self) -> float:
        return self._distance


class LaneInvasionEvent(SensorData):
    def __init__(self, frame: int, timestamp: float, transform: Transform, actor: Actor,
                 markings: list[LaneMarking]) -> None:
        super().__init__(frame, timestamp, transform)
        self._actor, self._markings = actor, markings

    @property
    def actor(self) -> Actor:
        return self._actor

    @property
    def crossed_lane_markings(self) -> list[LaneMarking]:
        return list(self._markings)


# ----------------------------------------------------------------------------------------------------------
# Blueprints


class ActorAttribute:
    def __init__(self, id: str, value: str, recommended: tuple[str, ...] = ()) -> None:  # noqa: A002
        self._id, self._value, self._recommended = id, value, list(recommended)

    @property
    def id(self) -> str:
        return self._id

    @property
    def recommended_values(self) -> list[str]:
        return list(self._recommended)

    def as_int(self) -> int:
        return int(self._value)

    def as_str(self) -> str:
        return self._value


class ActorBlueprint:
    def __init__(self, id: str, attributes: dict[str, tuple[str, tuple[str, ...]]]) -> None:  # noqa: A002
        self._id = id
        self._attrs = {k: ActorAttribute(k, v, rec) for k, (v, rec) in attributes.items()}

    @property
    def id(self) -> str:
        return self._id

    def has_attribute(self, id: str) -> bool:  # noqa: A002
        return id in self._attrs

    def get_attribute(self, id: str) -> ActorAttribute:  # noqa: A002
        if id not in self._attrs:
            raise IndexError(f"no such attribute: {id}")
        return self._attrs[id]

    def set_attribute(self, id: str, value: str) -> None:  # noqa: A002
        if id not in self._attrs:
            raise IndexError(f"no such attribute: {id}")
        if not isinstance(value, str):
            raise TypeError("set_attribute takes a string value")  # as the binding does
        a = self._attrs[id]
        self._attrs[id] = ActorAttribute(id, value, tuple(a.recommended_values))


def _description(bp: ActorBlueprint) -> tuple[str, dict[str, str]]:
    """What a spawn command copies out of a blueprint at the moment it is built."""
    return bp.id, {k: a.as_str() for k, a in bp._attrs.items()}


def default_blueprints() -> list[ActorBlueprint]:
    colors = ("255,0,0", "0,0,255", "20,20,20")
    vehicle = lambda name, wheels: ActorBlueprint(  # noqa: E731
        name, {"role_name": ("autopilot", ()), "color": (colors[0], colors), "number_of_wheels": (str(wheels), ())})
    return [
        vehicle("vehicle.tesla.model3", 4),
        vehicle("vehicle.audi.a2", 4),
        vehicle("vehicle.lincoln.mkz_2020", 4),
        vehicle("vehicle.bh.crossbike", 2),
        ActorBlueprint("sensor.camera.rgb", {"image_size_x": ("800", ()), "image_size_y": ("600", ()),
                                             "fov": ("90", ()), "sensor_tick": ("0.0", ()), "role_name": ("", ())}),
        ActorBlueprint("sensor.other.collision", {"role_name": ("", ())}),
        ActorBlueprint("sensor.other.lane_invasion", {"role_name": ("", ())}),
        ActorBlueprint("sensor.other.obstacle", {"distance": ("5", ()), "hit_radius": ("0.5", ()),
                                                 "only_dynamics": ("false", ()), "sensor_tick": ("0.0", ()),
                                                 "role_name": ("", ())}),
    ]


class BlueprintLibrary:
    def __init__(self, blueprints: list[ActorBlueprint]) -> None:
        self._bps = blueprints

    def filter(self, wildcard_pattern: str) -> BlueprintLibrary:
        return BlueprintLibrary([b for b in self._bps if fnmatch.fnmatchcase(b.id, wildcard_pattern)])

    def find(self, id: str) -> ActorBlueprint:  # noqa: A002
        for b in self._bps:
            if b.id == id:
                return b
        raise IndexError(f"blueprint '{id}' not found")

    def __iter__(self):
        return iter(self._bps)

    def __len__(self) -> int:
        return len(self._bps)


# ----------------------------------------------------------------------------------------------------------
# The fake server


class _Record:
    """Server-side state of one actor."""

    def __init__(self, actor_id: int, type_id: str, attrs: dict[str, str], transform: Transform,
                 parent: int | None) -> None:
        self.id, self.type_id, self.attrs, self.parent = actor_id, type_id, attrs, parent
        self.transform = _copy_transform(transform)
        self.ticked = False  # the pose reads as the origin until the server has ticked once
        self.speed = 0.0
        self.yaw_rate = 0.0
        self.control = VehicleControl()
        self.autopilot_port: int | None = None
        self.callback: Callable[[Any], None] | None = None
        self.listener: object = None  # the client whose sensor handle listens (listening is client-side)
        self.alive = True


class FakeServer:
    """State of one fake CARLA server, shared by every fake client pointed at it."""

    def __init__(self, version: str = "0.9.16", town: str = "Town01", opendrive: str = "<OpenDRIVE>fake</OpenDRIVE>",
                 spawn_points: list[tuple[float, float, float]] | None = None, synchronous_mode: bool = False):
        self.version = version
        self.town = town
        self.opendrive = opendrive
        if spawn_points is None:  # a 10 x 10 grid, 20 m apart, facing east
            spawn_points = [(20.0 * i, 20.0 * j, 0.0) for i in range(10) for j in range(10)]
        self.spawn_points = spawn_points
        self.blueprints = default_blueprints()
        self.settings = {**_settings_dict(WorldSettings()), "synchronous_mode": synchronous_mode}
        self.world_id = 1
        self.frame = 1000
        self.elapsed = 0.0
        self.records: dict[int, _Record] = {}
        self._ids = itertools.count(100)
        self.log: list[tuple] = []
        self.violations: list[str] = []
        self.down = False
        self.fail: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()  # next n calls of a name raise a non-timeout error
        self.refuse_spawns = 0
        self.plans: dict[str, Callable[[int], list[tuple[float, int]]]] = {}
        self.events: dict[int, list[tuple]] = collections.defaultdict(list)
        self.tm: dict[int, dict[str, Any]] = {}
        self.on_tick: dict[int, Callable[[Any], None]] = {}
        self._callback_ids = itertools.count(1)
        self.rpc_calls = 0
        self.down_rpcs = 0
        self.at_tick: dict[int, Callable[[FakeServer], None]] = {}
        self.tick_rpcs = 0
        self.tm_deadlocks = 0
        self.tm_rpc = False
        self._tm_rpc_ports: dict[int, int] = {}  # configured port -> RPC port
        self.tm_woken = 0
        self._tm_wake = threading.Event()
        self.restarts = 0
        self._timers: list[threading.Timer] = []
        self._lock = threading.RLock()

    # -- fake-only helpers for tests ---------------------------------------------------------------------

    def alive(self, prefix: str = "") -> list[int]:
        return sorted(r.id for r in self.records.values() if r.alive and r.type_id.startswith(prefix))

    def spawned(self, prefix: str = "") -> list[int]:
        return [e[1] for e in self.log if e[0] == "spawn" and e[2].startswith(prefix)]

    def index(self, entry: tuple) -> int:
        return self.log.index(entry)

    def join_timers(self) -> None:
        for t in list(self._timers):
            t.join()

    def restart(self) -> None:
        """A fresh server process on the same port (after a crash): the old world and its actors are gone."""
        with self._lock:
            for r in self.records.values():
                r.alive = False
                r.callback = None
            self.settings = _settings_dict(WorldSettings())
            self.world_id += 1
            self.tm = {}
            self.on_tick = {}
            self.down = False
            self.down_rpcs = 0
            self.fail.clear()
            self.restarts += 1
            self.log.append(("restart", self.world_id))

    # -- internals ---------------------------------------------------------------------------------------

    def rpc(self, name: str, host: str, port: int, timeout_s: float) -> None:
        self.rpc_calls += 1
        if name == "tick":
            self.tick_rpcs += 1
            hook = self.at_tick.pop(self.tick_rpcs, None)
            if hook is not None:
                hook(self)
        if self.down_rpcs > 0:
            self.down_rpcs -= 1
            raise RuntimeError(TIMEOUT_MESSAGE.format(ms=int(round(timeout_s * 1000)), host=host, port=port))
        if self.errors[name] > 0:
            self.errors[name] -= 1
            raise RuntimeError(f"fake server error in {name}")
        if self.down or self.fail[name] > 0:
            if self.fail[name] > 0:
                self.fail[name] -= 1
            raise RuntimeError(TIMEOUT_MESSAGE.format(ms=int(round(timeout_s * 1000)), host=host, port=port))

    def spawn(self, type_id: str, attrs: dict[str, str], transform: Transform, parent: int | None) -> int | None:
        if parent is None and type_id.startswith("vehicle."):
            if self.refuse_spawns > 0:
                self.refuse_spawns -= 1
                return None
            for r in self.records.values():
                if r.alive and r.parent is None and r.type_id.startswith("vehicle.") and \
                        math.hypot(r.transform.location.x - transform.location.x,
                                   r.transform.location.y - transform.location.y) < 2.0:
                    return None  # collision at the spawn position
        if parent is not None and (parent not in self.records or not self.records[parent].alive):
            self.violations.append(f"spawn of {type_id} attached to dead actor {parent}")
            return None
        rec = _Record(next(self._ids), type_id, attrs, transform, parent)
        self.records[rec.id] = rec
        self.log.append(("spawn", rec.id, type_id))
        return rec.id

    def destroy(self, actor_id: int, via: object) -> bool:
        """Destroy an actor through client ``via`` (destroying a sensor its own client listens to crashes)."""
        rec = self.records.get(actor_id)
        if rec is None or not rec.alive:
            return False
        if rec.callback is not None and rec.listener is via:
            self.violations.append(f"sensor {actor_id} destroyed while listening")
        for child in self.records.values():
            if child.parent == actor_id and child.alive:
                self.violations.append(f"vehicle {actor_id} destroyed before its sensor {child.id}")
        rec.alive = False
        self.log.append(("destroy", actor_id))
        return True

    def tick(self) -> int:
        with self._lock:
            if not self.settings["synchronous_mode"]:
                self.violations.append("tick() while the server is in asynchronous mode")
            for port, tm in self.tm.items():
                if any(r.alive and r.autopilot_port == port for r in self.records.values()) and not tm["sync"]:
                    self.violations.append(f"ticked with autopilot vehicles while TM {port} is asynchronous")
            dt = self.settings["fixed_delta_seconds"] or 0.05
            self.frame += 1
            self.elapsed += dt
            frame = self.frame
            for r in self.records.values():
                if not r.alive or r.parent is not None:
                    continue
                if r.ticked:
                    if r.autopilot_port is not None:
                        r.speed = 5.0
                    else:
                        c = r.control
                        r.speed = max(0.0, r.speed + (4.0 * c.throttle - 8.0 * c.brake) * dt)
                        r.yaw_rate = 30.0 * c.steer if r.speed > 0.1 else 0.0
                    r.transform.rotation.yaw += r.yaw_rate * dt
                    yaw = math.radians(r.transform.rotation.yaw)
                    r.transform.location.x += r.speed * math.cos(yaw) * dt
                    r.transform.location.y += r.speed * math.sin(yaw) * dt
                r.ticked = True
            self.log.append(("tick", frame))
            snapshot = WorldSnapshot(self, frame)
        for cb in list(self.on_tick.values()):
            self._deliver("world", frame,
                          lambda label, cb=cb: cb(snapshot if label == frame else WorldSnapshot(self, label)))
        for rec in [r for r in self.records.values() if r.alive and r.callback is not None]:
            if rec.type_id == "sensor.camera.rgb":
                w, h, fov = int(rec.attrs["image_size_x"]), int(rec.attrs["image_size_y"]), float(rec.attrs["fov"])
                self._deliver("camera", frame, lambda label, rec=rec: rec.callback(
                    Image(label, self.elapsed, Transform(), w, h, fov)))
            else:
                self._events(rec, frame)
        return frame

    def _deliver(self, kind: str, frame: int, send: Callable[[int], None]) -> None:
        plan = self.plans.get(kind, lambda f: [(0.0, f)])
        for delay, label in plan(frame):
            if delay <= 0:
                send(label)
            else:
                t = threading.Timer(delay, send, args=(label,))
                t.daemon = True
                self._timers.append(t)
                t.start()

    def _events(self, rec: _Record, frame: int) -> None:
        parent = Actor(self, rec.parent) if rec.parent is not None else None
        for event in self.events.get(frame, []):
            if event[0] == "collision" and rec.type_id == "sensor.other.collision":
                other = Actor(self, event[1]) if event[1] is not None else None
                impulse = Vector3D(300.0, 400.0, 0.0)
                rec.callback(CollisionEvent(frame, self.elapsed, Transform(), parent, other, impulse))
            elif event[0] == "lane" and rec.type_id == "sensor.other.lane_invasion":
                marks = [LaneMarking(LaneMarkingType[name]) for name in event[1]]
                rec.callback(LaneInvasionEvent(frame, self.elapsed, Transform(), parent, marks))
            elif event[0] == "obstacle" and rec.type_id == "sensor.other.obstacle":
                rec.callback(ObstacleDetectionEvent(frame, self.elapsed, Transform(), parent,
                                                    Actor(self, event[1]), float(event[2])))

    def record(self, actor_id: int) -> _Record:
        return self.records[actor_id]


# ----------------------------------------------------------------------------------------------------------
# Actors (client-side handles)


class Actor:
    def __init__(self, server: FakeServer, actor_id: int, client: object = None) -> None:
        self._server, self._id, self._client = server, actor_id, client

    @property
    def id(self) -> int:
        return self._id

    @property
    def type_id(self) -> str:
        return self._server.record(self._id).type_id

    @property
    def is_alive(self) -> bool:
        return self._server.record(self._id).alive

    @property
    def bounding_box(self) -> BoundingBox:
        extent = Vector3D(2.4, 1.0, 0.8) if self.type_id.startswith("vehicle.") else Vector3D(0.0, 0.0, 0.0)
        return BoundingBox(Location(), extent)

    def get_transform(self) -> Transform:
        rec = self._server.record(self._id)
        return _copy_transform(rec.transform) if rec.ticked else Transform()

    def get_location(self) -> Location:
        return self.get_transform().location

    def destroy(self) -> bool:
        self._server.rpc("destroy", "fake", 2000, 5.0)
        return self._server.destroy(self._id, via=self._client)


class Vehicle(Actor):
    def apply_control(self, control: VehicleControl) -> None:
        rec = self._server.record(self._id)
        if not isinstance(control, VehicleControl):
            raise TypeError(f"apply_control takes a carla.VehicleControl, got {type(control).__name__}")
        if not rec.alive:
            self._server.violations.append(f"apply_control on destroyed vehicle {self._id}")
        rec.control = control

    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        self._server.record(self._id).autopilot_port = tm_port if enabled else None


class Sensor(Actor):
    def listen(self, callback: Callable[[Any], Any]) -> None:
        rec = self._server.record(self._id)
        rec.callback, rec.listener = callback, self._client
        self._server.log.append(("listen", self._id))

    def stop(self) -> None:
        self._server.rpc("stop", "fake", 2000, 5.0)
        rec = self._server.record(self._id)
        if rec.callback is None:
            self._server.violations.append(f"stop() on sensor {self._id} that was not listening")
        rec.callback = None
        self._server.log.append(("stop", self._id))

    def is_listening(self) -> bool:
        return self._server.record(self._id).callback is not None


def _handle(server: FakeServer, actor_id: int, client: object) -> Actor:
    type_id = server.record(actor_id).type_id
    cls = Vehicle if type_id.startswith("vehicle.") else Sensor if type_id.startswith("sensor.") else Actor
    return cls(server, actor_id, client)


class ActorList:
    def __init__(self, actors: list[Actor]) -> None:
        self._actors = actors

    def filter(self, wildcard_pattern: str) -> ActorList:
        return ActorList([a for a in self._actors if fnmatch.fnmatchcase(a.type_id, wildcard_pattern)])

    def find(self, actor_id: int) -> Actor | None:
        return next((a for a in self._actors if a.id == actor_id), None)

    def __iter__(self):
        return iter(self._actors)

    def __len__(self) -> int:
        return len(self._actors)


class ActorSnapshot:
    def __init__(self, rec: _Record) -> None:
        self._id = rec.id
        self._transform = _copy_transform(rec.transform) if rec.ticked else Transform()
        yaw = math.radians(rec.transform.rotation.yaw)
        self._velocity = Vector3D(rec.speed * math.cos(yaw), rec.speed * math.sin(yaw), 0.0)
        self._angular = Vector3D(0.0, 0.0, rec.yaw_rate)

    @property
    def id(self) -> int:
        return self._id

    def get_transform(self) -> Transform:
        return _copy_transform(self._transform)

    def get_velocity(self) -> Vector3D:
        return self._velocity

    def get_acceleration(self) -> Vector3D:
        return Vector3D()

    def get_angular_velocity(self) -> Vector3D:
        return self._angular


class WorldSnapshot:
    def __init__(self, server: FakeServer, frame: int) -> None:
        self._frame = frame
        self._timestamp = Timestamp(frame, server.elapsed, 0.05, 0.0)
        self._actors = {r.id: ActorSnapshot(r) for r in server.records.values() if r.alive}

    @property
    def id(self) -> int:
        return self._frame

    @property
    def frame(self) -> int:
        return self._frame

    @property
    def timestamp(self) -> Timestamp:
        return self._timestamp

    def find(self, actor_id: int) -> ActorSnapshot | None:
        return self._actors.get(actor_id)

    def has_actor(self, actor_id: int) -> bool:
        return actor_id in self._actors

    def __iter__(self):
        return iter(self._actors.values())

    def __len__(self) -> int:
        return len(self._actors)


class Map:
    def __init__(self, name: str, xodr_content: str) -> None:
        self._name, self._xodr = name, xodr_content
        self._spawn_points: list[tuple[float, float, float]] = []  # set by the fake World.get_map

    @property
    def name(self) -> str:
        return self._name

    def to_opendrive(self) -> str:
        return self._xodr

    def get_spawn_points(self) -> list[Transform]:
        return [Transform(Location(x, y, 0.3), Rotation(yaw=yaw)) for x, y, yaw in self._spawn_points]


class TrafficManager:
    def __init__(self, server: FakeServer, port: int) -> None:
        self._server, self._port = server, port
        self._state()
        if server.tm_rpc and port not in server._tm_rpc_ports:
            server._tm_rpc_ports[port] = _serve_tm_rpc(self)

    def get_port(self) -> int:
        return self._server._tm_rpc_ports.get(self._port, self._port)

    def _state(self) -> dict[str, Any]:
        return self._server.tm.setdefault(self._port, {"sync": False, "seed": None, "distance": None, "hybrid": False})

    def set_synchronous_mode(self, mode_switch: bool = True) -> None:
        self._state()["sync"] = bool(mode_switch)
        if not mode_switch:
            self._server._tm_wake.set()
        self._server.log.append(("tm_sync", self._port, bool(mode_switch)))

    def shut_down(self) -> None:
        self._server.tm.pop(self._port, None)
        self._server.log.append(("tm_shut_down", self._port))

    def set_random_device_seed(self, value: int) -> None:
        self._state()["seed"] = value
        self._server.log.append(("tm_seed", self._port, value))

    def set_global_distance_to_leading_vehicle(self, distance: float) -> None:
        self._state()["distance"] = distance

    def set_hybrid_physics_mode(self, enabled: bool = False) -> None:
        self._state()["hybrid"] = enabled


def _serve_tm_rpc(tm: TrafficManager) -> int:
    """A msgpack-rpc listener for ``set_synchronous_mode`` (daemon threads); returns its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        with conn:
            while data := conn.recv(4096):
                unpacker.feed(data)
                for _, msgid, name, args in unpacker:
                    error = None
                    if name == "set_synchronous_mode":
                        tm.set_synchronous_mode(bool(args[0]))
                    else:
                        error = f"fake TM: {name} is not served"
                    conn.sendall(msgpack.packb([1, msgid, error, None]))

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


class World:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._server = client._server
        self._world_id = self._server.world_id

    def _rpc(self, name: str) -> None:
        self._client._rpc(name)

    @property
    def id(self) -> int:
        return self._world_id

    def get_settings(self) -> WorldSettings:
        self._rpc("get_settings")
        return _settings_from(self._server.settings)

    def apply_settings(self, settings: WorldSettings) -> int:
        self._rpc("apply_settings")
        if not isinstance(settings, WorldSettings):
            raise TypeError("apply_settings takes a carla.WorldSettings")
        self._server.settings = _settings_dict(settings)
        self._server.log.append(("apply_settings", dict(self._server.settings)))
        return self._server.frame

    def tick(self, seconds: float = 0.0) -> int:
        self._rpc("tick")
        frame = self._server.tick()
        server = self._server
        if server.tm_deadlocks > 0:
            server.tm_deadlocks -= 1
            if not server._tm_wake.wait(30.0):
                raise AssertionError("fake: world.tick() hung in the Traffic Manager and nothing woke it")
            server._tm_wake.clear()
            server.tm_woken += 1
        return frame

    def get_map(self) -> Map:
        self._rpc("get_map")
        m = Map(f"Carla/Maps/{self._server.town}", self._server.opendrive)
        m._spawn_points = list(self._server.spawn_points)
        return m

    def get_blueprint_library(self) -> BlueprintLibrary:
        self._rpc("get_blueprint_library")
        return BlueprintLibrary(self._server.blueprints)

    def try_spawn_actor(self, blueprint: ActorBlueprint, transform: Transform,
                        attach_to: Actor | None = None) -> Actor | None:
        self._rpc("spawn_actor")
        type_id, attrs = _description(blueprint)
        actor_id = self._server.spawn(type_id, attrs, transform, attach_to.id if attach_to is not None else None)
        return _handle(self._server, actor_id, self._client) if actor_id is not None else None

    def spawn_actor(self, blueprint: ActorBlueprint, transform: Transform, attach_to: Actor | None = None) -> Actor:
        actor = self.try_spawn_actor(blueprint, transform, attach_to)
        if actor is None:
            raise RuntimeError("Spawn failed because of collision at spawn position")
        return actor

    def get_actors(self, actor_ids: list[int] | None = None) -> ActorList:
        self._rpc("get_actors")
        ids = [i for i, r in self._server.records.items() if r.alive and (actor_ids is None or i in actor_ids)]
        return ActorList([_handle(self._server, i, self._client) for i in ids])

    def get_snapshot(self) -> WorldSnapshot:
        return WorldSnapshot(self._server, self._server.frame)

    def on_tick(self, callback: Callable[[WorldSnapshot], Any]) -> int:
        cid = next(self._server._callback_ids)
        self._server.on_tick[cid] = callback
        return cid

    def remove_on_tick(self, callback_id: int) -> None:
        self._server.on_tick.pop(callback_id, None)


class Client:
    """``carla.Client``; :func:`make_carla` binds it to a :class:`FakeServer`."""

    _server: FakeServer

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0) -> None:
        self._host, self._port, self._timeout = host, port, 5.0

    def _rpc(self, name: str) -> None:
        self._server.rpc(name, self._host, self._port, self._timeout)

    def set_timeout(self, seconds: float) -> None:
        self._timeout = float(seconds)

    def get_client_version(self) -> str:
        return "0.9.16"

    def get_server_version(self) -> str:
        self._rpc("get_server_version")
        return self._server.version

    def get_world(self) -> World:
        self._rpc("get_world")
        return World(self)

    def load_world_if_different(self, map_name: str, reset_settings: bool = True) -> None:
        self._rpc("load_world")
        s = self._server
        s.log.append(("load_world_if_different", map_name, reset_settings))
        if map_name == s.town:
            return None
        if any(r.alive for r in s.records.values()):
            for r in s.records.values():
                r.alive = False
        s.town = map_name
        s.world_id += 1
        if reset_settings:
            s.settings = _settings_dict(WorldSettings())
        s.log.append(("load_world", map_name, reset_settings))
        return None

    def get_trafficmanager(self, port: int = 8000) -> TrafficManager:
        self._rpc("get_trafficmanager")
        return TrafficManager(self._server, port)

    def apply_batch_sync(self, commands: list, do_tick: bool = False) -> list[Response]:
        self._rpc("apply_batch_sync")
        s = self._server
        out = []
        for cmd in commands:
            if isinstance(cmd, SpawnActor):
                type_id, attrs = cmd._description
                actor_id = s.spawn(type_id, attrs, cmd.transform, cmd.parent_id or None)
                if actor_id is None:
                    out.append(Response(0, "Spawn failed because of collision at spawn position"))
                    continue
                for then in cmd._then:
                    if isinstance(then, SetAutopilot) and then.actor_id == FutureActor:
                        s.record(actor_id).autopilot_port = then._tm_port if then.enabled else None
                    else:
                        raise TypeError(f"fake: unsupported chained command {then!r}")
                out.append(Response(actor_id, ""))
            elif isinstance(cmd, DestroyActor):
                ok = s.destroy(cmd.actor_id, via=self)
                out.append(Response(cmd.actor_id, "" if ok else f"actor {cmd.actor_id} not found"))
            else:
                raise TypeError(f"fake: unsupported command {cmd!r}")
        if do_tick:
            s.tick()
        return out


# ----------------------------------------------------------------------------------------------------------
# carla.command

FutureActor = 0  # the 0.9.16 wheel exposes command.FutureActor as the int 0


class SpawnActor:
    def __init__(self, blueprint: ActorBlueprint, transform: Transform, parent: Actor | int | None = None) -> None:
        self._description = _description(blueprint)  # copied now, as the wheel does
        self._transform = _copy_transform(transform)
        self._parent = parent.id if isinstance(parent, Actor) else (parent or 0)
        self._then: list = []

    @property
    def transform(self) -> Transform:
        return self._transform

    @property
    def parent_id(self) -> int:
        return self._parent

    def then(self, command: Any) -> SpawnActor:
        self._then.append(command)
        return self


class DestroyActor:
    def __init__(self, actor: Actor | int) -> None:
        self._actor_id = actor.id if isinstance(actor, Actor) else int(actor)

    @property
    def actor_id(self) -> int:
        return self._actor_id


class SetAutopilot:
    def __init__(self, actor: Actor | int, enabled: bool, port: int = 8000) -> None:
        self._actor_id = actor.id if isinstance(actor, Actor) else int(actor)
        self._enabled, self._tm_port = enabled, port  # the wheel calls the property tm_port, the stub port

    @property
    def actor_id(self) -> int:
        return self._actor_id

    @property
    def enabled(self) -> bool:
        return self._enabled


class Response:
    def __init__(self, actor_id: int, error: str) -> None:
        self._actor_id, self._error = actor_id, error

    @property
    def actor_id(self) -> int:
        return self._actor_id

    @property
    def error(self) -> str:
        return self._error

    def has_error(self) -> bool:
        return bool(self._error)


# Every class above that mirrors a class of the real wheel, by its name there (checked against the stubs).
MIRRORED = {
    cls.__name__: cls
    for cls in (
        Vector3D, Location, Rotation, Transform, BoundingBox, VehicleControl, WorldSettings, Timestamp,
        LaneMarkingType, LaneMarking, SensorData, Image, CollisionEvent, LaneInvasionEvent, ActorAttribute,
        ActorBlueprint, BlueprintLibrary, Actor, Vehicle, Sensor, ActorList, ActorSnapshot, WorldSnapshot, Map,
        TrafficManager, World, Client,
    )
}
MIRRORED_COMMANDS = {cls.__name__: cls for cls in (SpawnActor, DestroyActor, SetAutopilot, Response)}


def make_carla(server: FakeServer) -> types.SimpleNamespace:
    """A stand-in for the ``carla`` module whose ``Client`` talks to ``server``."""
    bound = type("Client", (Client,), {"_server": server})
    command = types.SimpleNamespace(**MIRRORED_COMMANDS, FutureActor=FutureActor)
    return types.SimpleNamespace(**{**MIRRORED, "Client": bound}, command=command)
