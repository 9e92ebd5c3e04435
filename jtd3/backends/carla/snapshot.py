"""One frame's carla data -> :class:`jtd3.backends.base.Snapshot` (plain NumPy: no carla object leaves here).

The world snapshot gives every actor's pose and velocity; the types and bounding boxes, which do not change,
come from the session's ``statics`` table (read once per episode).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jtd3.backends.base import ActorState, CollisionEvent, LaneInvasionEvent, ObstacleReading, Snapshot, Vehicles
from jtd3.backends.carla.errors import CarlaError
from jtd3.backends.carla.sensors import vector3

__all__ = ["actor_state", "assemble_snapshot", "obstacle_reading"]


def assemble_snapshot(frame: int, ws: Any, ego_id: int, statics: dict[int, tuple[str, np.ndarray]],
                      camera: np.ndarray, collisions: tuple[CollisionEvent, ...],
                      lanes: tuple[LaneInvasionEvent, ...], obstacles: list[Any]) -> Snapshot:
    """The Snapshot of ``frame`` from its world snapshot ``ws`` and the sensor data already matched to it."""
    if not ws.has_actor(ego_id):
        raise CarlaError(f"the ego (id {ego_id}) is missing from the world snapshot of frame {frame}")
    ego = actor_state(ws.find(ego_id), *statics[ego_id])
    ids, transforms, velocities = [], [], []
    for i in sorted(statics):
        if i != ego_id and ws.has_actor(i):  # vehicles destroyed since reset drop out
            snap = ws.find(i)
            ids.append(i)
            transforms.append(snap.get_transform())
            velocities.append(vector3(snap.get_velocity()))
    if ids:
        vehicles = Vehicles(
            ids=np.array(ids, dtype=np.int64),
            location=np.array([vector3(t.location) for t in transforms]),
            yaw=np.array([float(t.rotation.yaw) for t in transforms]),
            velocity=np.array(velocities),
            extent=np.array([statics[i][1] for i in ids]),
        )
    else:
        vehicles = Vehicles.empty()
    return Snapshot(
        frame=frame,
        timestamp=float(ws.timestamp.elapsed_seconds),
        ego=ego,
        vehicles=vehicles,
        camera=camera,
        collisions=collisions,
        lane_invasions=lanes,
        obstacle=obstacle_reading(obstacles, ws, frame),
    )


def obstacle_reading(events: list[Any], ws: Any, frame: int) -> ObstacleReading | None:
    """The obstacle event of this frame (or of the frame before, when it arrived after its own tick was
    collected), with the other actor's velocity from the same world snapshot; None without one."""
    if not events or int(events[-1].frame) < frame - 1:
        return None
    event = events[-1]
    other = event.other_actor
    other_id = int(other.id) if other is not None else -1
    velocity = vector3(ws.find(other_id).get_velocity()) if other_id >= 0 and ws.has_actor(other_id) else np.zeros(3)
    return ObstacleReading(int(event.frame), other_id, float(event.distance), velocity)


def actor_state(snap: Any, type_id: str, extent: np.ndarray) -> ActorState:
    """A ``carla.ActorSnapshot`` with its type and bounding-box extent -> :class:`ActorState`."""
    tf = snap.get_transform()
    return ActorState(
        id=int(snap.id),
        type_id=type_id,
        location=vector3(tf.location),
        rotation=np.array([tf.rotation.pitch, tf.rotation.yaw, tf.rotation.roll], dtype=np.float64),
        velocity=vector3(snap.get_velocity()),
        acceleration=vector3(snap.get_acceleration()),
        angular_velocity=vector3(snap.get_angular_velocity()),
        extent=extent.copy(),
    )
