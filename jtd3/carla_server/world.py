"""The world the server serves: the embedded simulator's town, dynamics, cameras and collisions, with actors
spawned by the client (no networking here; :mod:`jtd3.carla_server.server` publishes what ``tick`` returns).

Every vehicle moves by :func:`jtd3.backends.sim.dynamics.step` (the embedded simulator's kinematic bicycle) under the
last control the client applied (its own, or its Traffic Manager's ``apply_batch``). A vehicle that carries a
collision sensor is checked against every other vehicle and the town's buildings after each tick; on a hit it is
put back at its pose before the tick with zero speed (the embedded simulator's collision model) and the sensor
reports the other actor. Cameras render with :class:`jtd3.backends.sim.render.FrontCamera` (grey, sent as BGRA);
obstacle sensors sweep along their vehicle's heading (:func:`jtd3.backends.obstacle.sweep`); all in
:mod:`jtd3.carla_server.sensors`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from jtd3.backends.base import VehicleControl
from jtd3.backends.sim import dynamics
from jtd3.backends.sim.config import SimConfig
from jtd3.backends.sim.events import obb_overlap
from jtd3.backends.sim.render import FrontCamera, build_town_raster
from jtd3.carla_server import layouts as L
from jtd3.carla_server.actors import Actor, Blueprint, blueprint_library
from jtd3.carla_server.sensors import SpawnError, camera, check_obstacle, collisions, image, obstacle
from jtd3.roads.towns import load_town

__all__ = ["SpawnError", "World", "rehearse", "spawn_points"]

SPECTATOR_ID = 1
WORLD_STREAM = 1  # stream id of the pushed world state; sensors get 2, 3, ...
MAX_DESTROYED = 10_000


def spawn_points(net, spacing: float = 40.0) -> list[tuple[float, ...]]:
    """Recommended spawn points: every ``spacing`` metres along each driving lane outside junctions, 0.3 m up."""
    out = []
    for li in net.driving_lanes():
        if net.lanes[li].is_junction:
            continue
        xy, yaw, arc, _ = net.lane_polyline(li)
        if len(arc) < 2 or arc[-1] < 10.0:
            continue
        for target in np.arange(5.0, arc[-1] - 5.0, spacing):
            k = int(np.searchsorted(arc, target))
            out.append((float(xy[k, 0]), float(xy[k, 1]), 0.3, 0.0, float(yaw[k]), 0.0))
    return out


class World:
    """Actors, settings and the clock of one episode of the served town."""

    def __init__(self, sim: SimConfig, map_name: str):
        self.sim = sim
        self.map_name = map_name
        self.network = load_town(sim.town, sim.town_seed)
        self.raster = build_town_raster(self.network, sim.render)
        self.opendrive = self.network.opendrive_text
        self.spawn_points = spawn_points(self.network)
        self.blueprints: dict[str, Blueprint] = blueprint_library(sim.vehicle, sim.npc)
        self.episode_id = 1
        self.settings = {
            "synchronous_mode": False, "no_rendering_mode": False, "fixed_delta_seconds": None,
            "substepping": True, "max_substep_delta_time": 0.01, "max_substeps": 10,
            "max_culling_distance": 0.0, "deterministic_ragdolls": True, "tile_stream_distance": 3000.0,
            "actor_active_distance": 2000.0, "spectator_as_ego": True,
        }
        self.frame = 0
        self.elapsed = 0.0
        self.actors: dict[int, Actor] = {
            SPECTATOR_ID: Actor(SPECTATOR_ID, "spectator", [], (0.0, 0.0, 100.0, -90.0, 0.0, 0.0))
        }
        self.destroyed: dict[int, Actor] = {}  # id -> actor, the most recent MAX_DESTROYED
        self._next_id = 100
        self._next_stream = WORLD_STREAM + 1
        self.cameras: dict[tuple, FrontCamera] = {}  # by (width, height, fov, x, z, pitch)
        self._speed_limits: dict[int, float] = {}

    def continue_ids(self, old: "World") -> None:
        """Go on from ``old``'s frame counter, actor ids and stream ids (a new episode reuses none of them)."""
        self.frame = old.frame
        self._next_id = old._next_id
        self._next_stream = old._next_stream

    @property
    def delta_seconds(self) -> float:
        return float(self.settings["fixed_delta_seconds"] or 0.05)

    # -- spawning ----------------------------------------------------------------------------------------

    def spawn(self, type_id: str, attributes: list[list], transform: tuple[float, ...], parent: int = 0) -> Actor:
        bp = self.blueprints.get(type_id)
        if bp is None:
            raise SpawnError(f"Unknown blueprint {type_id!r}; this server offers: {', '.join(sorted(self.blueprints))}")
        if parent and parent not in self.actors:
            raise SpawnError(f"Parent actor {parent} not found")
        values = {a.id: [a.id, a.definition()[1], a.value] for a in bp.attributes}
        for a in attributes:
            if a[0] in values:
                values[a[0]] = [a[0], values[a[0]][1], str(a[2])]
        actor = Actor(self._next_id, type_id, list(values.values()), transform, bp, parent=parent)
        if actor.is_vehicle:
            x, y, _, _, yaw, _ = transform
            if self.overlaps(x, y, yaw, bp.extent, skip=-1).size:
                raise SpawnError("Spawn failed because of collision at spawn position")
            actor.state = dynamics.EgoState(x, y, yaw)
            actor.control = VehicleControl()
            actor.speed_limit_kmh = self._speed_limit(x, y, yaw)
        elif type_id.startswith("sensor."):
            if type_id == "sensor.camera.rgb":
                camera(self, actor)  # validates the size, fov and mount now: a bad camera fails its spawn
            elif type_id == "sensor.other.obstacle":
                check_obstacle(actor)
            actor.stream_id = self._next_stream
            self._next_stream += 1
        self._next_id += 1
        self.actors[actor.id] = actor
        return actor

    def destroy(self, actor_id: int) -> bool:
        """Destroy an actor and everything attached to it; False when there is no such actor."""
        if actor_id not in self.actors or actor_id == SPECTATOR_ID:
            return False
        for child in [a.id for a in self.actors.values() if a.parent == actor_id]:
            self.destroy(child)
        self.destroyed[actor_id] = self.actors.pop(actor_id)
        while len(self.destroyed) > MAX_DESTROYED:
            del self.destroyed[next(iter(self.destroyed))]
        return True

    def actor_or_destroyed(self, actor_id: int) -> tuple[Actor, bool]:
        """``(actor, alive)``: a live actor, or one destroyed recently; ``KeyError`` for an id never spawned.

        The client's Traffic Manager keeps calling about vehicles until it sees them gone from the pushed
        state, one tick after they were destroyed; an error reply on its thread aborts the client process,
        so those calls are answered as if the actor were still there (and change nothing).
        """
        if actor_id in self.actors:
            return self.actors[actor_id], True
        if actor_id in self.destroyed:
            return self.destroyed[actor_id], False
        raise KeyError(f"actor {actor_id} not found")

    def vehicle(self, actor_id: int) -> Actor:
        a = self.actors.get(actor_id)
        if a is None or not a.is_vehicle:
            raise KeyError(f"actor {actor_id} is not a vehicle of this world")
        return a

    # -- geometry ----------------------------------------------------------------------------------------

    def world_transform(self, a: Actor) -> tuple[float, ...]:
        if a.is_vehicle:
            s = a.state
            return (s.x, s.y, 0.0, 0.0, s.yaw, 0.0)
        if not a.parent or a.parent not in self.actors:
            return a.transform
        px, py, pz, _, pyaw, _ = self.world_transform(self.actors[a.parent])
        x, y, z, pitch, yaw, roll = a.transform
        c, s = math.cos(math.radians(pyaw)), math.sin(math.radians(pyaw))
        return (px + x * c - y * s, py + x * s + y * c, pz + z, pitch, pyaw + yaw, roll)

    def vehicles(self) -> list[Actor]:
        return [a for a in self.actors.values() if a.is_vehicle]

    def overlaps(self, x: float, y: float, yaw: float, extent, skip: int) -> np.ndarray:
        others = [a for a in self.vehicles() if a.id != skip]
        if not others:
            return np.zeros(0, np.int64)
        ox = np.array([a.state.x for a in others])
        oy = np.array([a.state.y for a in others])
        oyaw = np.array([a.state.yaw for a in others])
        ext = np.array([a.extent for a in others])
        hit = obb_overlap(x, y, yaw, extent[0], extent[1], ox, oy, oyaw, ext[:, 0], ext[:, 1])
        return np.array([others[i].id for i in np.flatnonzero(hit)], np.int64)

    def _speed_limit(self, x: float, y: float, yaw: float) -> float:
        p = self.network.project_many(np.array([[x, y]]), np.array([yaw]))
        lane = int(p.lane_index[0])
        if lane not in self._speed_limits:
            limit = self.network.speed_limit(lane)
            self._speed_limits[lane] = 3.6 * limit if limit else self.sim.npc.default_speed_limit
        return self._speed_limits[lane]

    # -- the tick ----------------------------------------------------------------------------------------

    def tick(self, dt: float | None = None) -> list[tuple[int, bytes]]:
        """Advance every vehicle by one step; returns the messages to publish ``[(stream_id, payload)]``."""
        dt = self.delta_seconds if dt is None else dt
        vehicles = self.vehicles()
        before = {a.id: a.state for a in vehicles}
        for a in vehicles:
            if a.simulate_physics:
                a.state = dynamics.step(a.state, a.control, a.blueprint.vehicle, dt)
        self.frame += 1
        self.elapsed += dt
        messages: list[tuple[int, bytes]] = []
        for sensor in [s for s in self.actors.values() if s.type_id == "sensor.other.collision"]:
            messages += collisions(self, sensor, before, dt)
        if self.frame % 10 == 0:
            for a in vehicles:
                a.speed_limit_kmh = self._speed_limit(a.state.x, a.state.y, a.state.yaw)
        messages.append((WORLD_STREAM, self.world_state()))
        for sensor in [s for s in self.actors.values() if s.type_id == "sensor.other.obstacle"]:
            messages += obstacle(self, sensor)
        for cam in [s for s in self.actors.values() if s.type_id == "sensor.camera.rgb"]:
            period = float(cam.attribute("sensor_tick", "0") or 0.0)
            if self.elapsed - cam.last_image_time >= period - 1e-9:
                cam.last_image_time = self.elapsed
                messages.append((cam.stream_id, image(self, cam)))
        return messages

    def world_state(self) -> bytes:
        parts = [L.sensor_header(L.SENSOR_TYPES["world_observer"], self.frame, self.elapsed, (0.0,) * 6),
                 L.episode_header(self.episode_id, time.time(), self.delta_seconds)]
        for a in self.actors.values():
            tf = self.world_transform(a)
            if a.is_vehicle:
                s = a.state
                parts.append(L.actor_dynamic_state(a.id, tf, (s.vx, s.vy, 0.0), (0.0, 0.0, s.yaw_rate),
                                                   (s.ax, s.ay, 0.0), L.vehicle_data(a.control_tuple, a.speed_limit_kmh)))
            else:
                parts.append(L.actor_dynamic_state(a.id, tf, (0.0,) * 3, (0.0,) * 3, (0.0,) * 3))
        return b"".join(parts)

    def actor_object(self, a: Actor, stream_token: bytes = b"") -> list:
        """msgpack ``rpc::Actor`` (the stream token is filled in by the server for sensors)."""
        uid = a.blueprint.uid if a.blueprint else 0
        return L.actor_object(a.id, a.parent, uid, a.type_id, a.attributes, a.extent, a.semantic_tags(), stream_token)


def rehearse(sim: SimConfig, map_name: str) -> None:
    """Run every per-tick path once on a throwaway world of the same town: two vehicles, a camera, a collision
    and an obstacle sensor on the first, three ticks.

    The simulator's loops are compiled by numba on first use (seconds on a fresh install, where nothing is cached
    yet; about a second to load later). The server calls this before it listens, so that cost is paid at start-up
    and not inside a client's first ``spawn_actor`` or ``tick``, which the carla client gives a few seconds.
    The town and its raster are cached, so the throwaway world costs little else.
    """
    w = World(sim, map_name)
    w.settings["fixed_delta_seconds"] = 0.05
    x, y, _, _, yaw, _ = w.spawn_points[0]
    ego = w.spawn("vehicle.tesla.model3", [], (x, y, 0.0, 0.0, yaw, 0.0))
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    w.spawn("vehicle.tesla.model3", [], (x + 8.0 * c, y + 8.0 * s, 0.0, 0.0, yaw, 0.0))
    w.spawn("sensor.camera.rgb", [], (1.5, 0.0, 2.4, 0.0, 0.0, 0.0), parent=ego.id)
    w.spawn("sensor.other.collision", [], (0.0,) * 6, parent=ego.id)
    w.spawn("sensor.other.obstacle", [["only_dynamics", "", "true"]], (2.5, 0.0, 1.0, 0.0, 0.0, 0.0), parent=ego.id)
    ego.control = VehicleControl(throttle=1.0)
    for _ in range(3):
        w.tick()
