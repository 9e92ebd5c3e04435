"""What the server's sensors send: camera images (the embedded simulator's front camera, grey as BGRA) and
collision events (the embedded simulator's collision model: a vehicle carrying a collision sensor that
overlaps another vehicle or a building after a tick is put back where it was, standing, and the sensor reports
the other actor with the impulse of a perfectly plastic impact).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from jtd3.backends.base import Vehicles
from jtd3.backends.obstacle import sweep_vehicles
from jtd3.backends.sim import dynamics
from jtd3.backends.sim.config import CameraConfig
from jtd3.backends.sim.events import footprint_points, relative_impulse
from jtd3.backends.sim.render import BUILDING, FrontCamera
from jtd3.carla_server import layouts as L
from jtd3.carla_server.actors import Actor

if TYPE_CHECKING:
    from jtd3.carla_server.world import World

__all__ = ["MIN_CAMERA_HEIGHT", "SpawnError", "camera", "check_obstacle", "collisions", "image", "obstacle"]

MIN_CAMERA_HEIGHT = 0.05  # metres; a camera mounted lower (e.g. at the vehicle origin) renders from this height
STATIC_BUILDING = [0, 0, [0, "static.building", []], L.bounding_box_object((0.0, 0.0, 0.0)), bytes([3]), b""]


class SpawnError(ValueError):
    """A spawn the server refuses (the client gets CARLA's error text)."""


def camera(world: World, a: Actor) -> FrontCamera:
    """The renderer of camera actor ``a`` (size, fov, mount x, z and pitch).

    Raises :class:`SpawnError` for what the embedded camera cannot render: a mount with a lateral offset, yaw or
    roll, fov outside [10, 170] degrees, pitch outside [-89, 30], sizes outside [8, 2048].
    """
    x, y, z, pitch, yaw, roll = a.transform
    if abs(y) > 1e-3 or abs(yaw) > 1e-3 or abs(roll) > 1e-3:
        raise SpawnError(f"camera mount y = {y:g} m, yaw = {yaw:g}, roll = {roll:g} deg not supported by this server: "
                         f"the embedded front camera looks forward from the vehicle's centre line (x, z, pitch only)")
    z = max(z, MIN_CAMERA_HEIGHT)  # the ground renderer needs the eye above the ground
    w, h = int(a.attribute("image_size_x", "800")), int(a.attribute("image_size_y", "600"))
    fov = float(a.attribute("fov", "90"))
    key = (w, h, fov, x, z, pitch)
    if key not in world.cameras:
        try:
            cam = CameraConfig(width=w, height=h, fov=fov, x=x, z=z, pitch=pitch)
        except ValueError as e:
            raise SpawnError(f"camera not supported by this server: {e}") from e
        world.cameras[key] = FrontCamera(cam, world.sim.render, world.raster, w, h)
    return world.cameras[key]


def collisions(world: World, sensor: Actor, before: dict, dt: float) -> list[tuple[int, bytes]]:
    """The collision events of ``sensor``'s vehicle after a tick (``before``: states before it), one per actor hit."""
    car = world.actors.get(sensor.parent)
    if car is None or not car.is_vehicle:
        return []
    s = car.state
    hits: list[list] = []
    impulses = []
    for other_id in world.overlaps(s.x, s.y, s.yaw, car.extent, skip=car.id):
        other = world.actors[int(other_id)]
        hits.append(world.actor_object(other))
        impulses.append(relative_impulse(s.velocity, other.state.velocity, car.blueprint.vehicle.mass,
                                         other.blueprint.vehicle.mass))
    if world.sim.static_collisions:
        pts = footprint_points(s.x, s.y, s.yaw, car.extent[0], car.extent[1])
        if np.any(world.raster.class_at(pts[:, 0], pts[:, 1]) == BUILDING):
            hits.append(STATIC_BUILDING)
            impulses.append(relative_impulse(s.velocity, np.zeros(3), car.blueprint.vehicle.mass, math.inf))
    if not hits:
        return []
    prev = before[car.id]
    speed = math.hypot(prev.vx, prev.vy)
    direction = (prev.vx / speed, prev.vy / speed) if speed > 1e-6 else (1.0, 0.0)
    # as jtd3.backends.sim.world.SimWorld does for its ego: back to the pose before the tick, standing
    car.state = dynamics.EgoState(prev.x, prev.y, prev.yaw, vx=0.0, vy=0.0, ax=-prev.vx / dt, ay=-prev.vy / dt,
                                  steer=s.steer)
    header = L.sensor_header(L.SENSOR_TYPES[sensor.type_id], world.frame, world.elapsed, world.world_transform(sensor))
    me = world.actor_object(car)
    return [(sensor.stream_id, L.collision_payload(header, me, other, (-direction[0] * j, -direction[1] * j, 0.0)))
            for other, j in zip(hits, impulses)]


def check_obstacle(a: Actor) -> None:
    """Raises :class:`SpawnError` for an obstacle sensor this server cannot compute: one that also detects static
    geometry (``only_dynamics`` false, CARLA's default) or is mounted with a yaw."""
    if a.attribute("only_dynamics", "false").lower() != "true":
        raise SpawnError("sensor.other.obstacle: this server detects vehicles only; set only_dynamics to true")
    if abs(a.transform[4]) > 1e-3:
        raise SpawnError(f"sensor.other.obstacle: mount yaw {a.transform[4]:g} deg not supported (it looks ahead)")


def obstacle(world: World, sensor: Actor) -> list[tuple[int, bytes]]:
    """The obstacle event of ``sensor`` now, if a vehicle is in its sweep (:func:`jtd3.backends.obstacle.sweep`
    from the sensor's mount along its parent's heading; vehicles only, as with ``only_dynamics``)."""
    car = world.actors.get(sensor.parent)
    if car is None or not car.is_vehicle:
        return []
    others = _other_vehicles(world, car.id)
    x, y, *_, yaw, _ = world.world_transform(sensor)
    hit = sweep_vehicles((x, y), yaw, float(sensor.attribute("distance", "5")),
                         float(sensor.attribute("hit_radius", "0.5")), others)
    if hit is None:
        return []
    i, travelled = hit
    other = world.actors[int(others.ids[i])]
    header = L.sensor_header(L.SENSOR_TYPES[sensor.type_id], world.frame, world.elapsed, world.world_transform(sensor))
    return [(sensor.stream_id, L.obstacle_payload(header, world.actor_object(car), world.actor_object(other), travelled))]


def _other_vehicles(world: World, skip: int) -> Vehicles:
    """Every vehicle of the world but actor ``skip``, as the embedded simulator's ``Vehicles``."""
    others = [a for a in world.vehicles() if a.id != skip]
    if not others:
        return Vehicles.empty()
    return Vehicles(
        ids=np.array([a.id for a in others], np.int64),
        location=np.array([[a.state.x, a.state.y, 0.0] for a in others]),
        yaw=np.array([a.state.yaw for a in others]),
        velocity=np.array([[a.state.vx, a.state.vy, 0.0] for a in others]),
        extent=np.array([a.extent for a in others]),
    )


def image(world: World, cam: Actor) -> bytes:
    """The streamed image of camera ``cam`` now: sensor header, image header, BGRA (grey in B, G and R)."""
    model = camera(world, cam)
    parent = world.actors.get(cam.parent)
    vehicles = _other_vehicles(world, cam.parent)
    if parent is not None and parent.is_vehicle:
        x, y, yaw = parent.state.x, parent.state.y, parent.state.yaw
    else:  # a free camera: its own pose, mount offsets measured from there
        x, y, _, _, yaw, _ = world.world_transform(cam)
        x -= model.cam.x * math.cos(math.radians(yaw))
        y -= model.cam.x * math.sin(math.radians(yaw))
    grey = model.render(x, y, yaw, vehicles)
    bgra = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA)
    header = L.sensor_header(L.SENSOR_TYPES[cam.type_id], world.frame, world.elapsed, world.world_transform(cam))
    return L.image_payload(header, model.W, model.H, float(model.cam.fov), bgra.tobytes())
