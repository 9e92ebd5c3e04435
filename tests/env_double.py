"""A scripted test double of :class:`jtd3.backends.base.Backend` for the environment tests.

``ScriptedBackend`` drives the ego with a plain kinematic model (or teleports it along poses the test queues),
reports the NPCs, collisions and lane invasions the test scripts, and renders a camera frame that encodes the
frame number (pixel [0, 0]) so frame-stack order can be checked. It implements exactly the Backend protocol
(``opendrive``, ``reset``, ``step``, ``close``: tests/test_env_double_honest in test_env.py checks names and
parameters against the Protocol).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jtd3.backends.base import (
    ActorState, CollisionEvent, LaneInvasionEvent, Pose, Snapshot, VehicleControl, Vehicles,
)
from jtd3.backends.obstacle import ObstacleSensorConfig, front_reading
from jtd3.roads.towns import load_town

EGO_EXTENT = np.array([2.4, 1.05, 0.75])


class ScriptedBackend:
    """Backend double. Scripting (set by tests before or between steps):

    - ``teleports``: list of (x, y, yaw_deg, speed) consumed one per ``step`` instead of the kinematic model;
    - ``collide_on_steps`` / ``invade_on_steps``: step numbers (1-based) that report a collision / lane invasion;
    - ``npcs``: ``Vehicles`` reported every tick (static unless the test changes them); the front obstacle
      sensor (``obstacle``, the backends' default settings) sweeps them as both backends do.
    """

    def __init__(self, town: str = "town01", frame_shape: tuple[int, int] = (84, 84), dt: float = 0.05,
                 accel: float = 3.0, max_steer_deg: float = 35.0, wheelbase: float = 2.9) -> None:
        self.network = load_town(town)
        self.frame_shape = frame_shape
        self.dt = dt
        self.accel = accel
        self.max_steer_deg = max_steer_deg
        self.wheelbase = wheelbase
        self.teleports: list[tuple[float, float, float, float]] = []
        self.collide_on_steps: set[int] = set()
        self.invade_on_steps: set[int] = set()
        self.npcs = Vehicles.empty()
        self.obstacle = ObstacleSensorConfig()
        self.controls: list[VehicleControl] = []
        self.camera_requests: list[bool] = []  # step()'s camera argument, per tick
        self.resets: list[tuple[Pose, int, int]] = []
        self.closed = 0
        self._pose = (0.0, 0.0, 0.0)
        self._speed = 0.0
        self._accel = np.zeros(3)
        self._frame = 0
        self._steps = 0

    # -- Backend protocol ----------------------------------------------------------------------------------

    @property
    def opendrive(self) -> str:
        return self.network.opendrive_text

    def reset(self, spawn: Pose, num_vehicles: int, seed: int) -> Snapshot:
        self.resets.append((spawn, num_vehicles, seed))
        self._pose = (float(spawn.x), float(spawn.y), float(spawn.yaw))
        self._speed = 0.0
        self._accel = np.zeros(3)
        self._steps = 0
        self._frame += 1
        return self._snapshot((), ())

    def step(self, control: VehicleControl, camera: bool = True) -> Snapshot:
        if not isinstance(control, VehicleControl):
            raise TypeError("control must be a VehicleControl")
        self.controls.append(control)
        self.camera_requests.append(camera)
        self._steps += 1
        self._frame += 1
        old_v = self._velocity()
        if self.teleports:
            x, y, yaw, v = self.teleports.pop(0)
            self._pose, self._speed = (x, y, yaw), v
        else:
            x, y, yaw = self._pose
            v = max(self._speed + (control.throttle - control.brake) * self.accel * self.dt, 0.0)
            delta = math.radians(control.steer * self.max_steer_deg)
            yaw = yaw + math.degrees(v * math.tan(delta) / self.wheelbase * self.dt)
            r = math.radians(yaw)
            self._pose = (x + v * math.cos(r) * self.dt, y + v * math.sin(r) * self.dt, yaw)
            self._speed = v
        self._accel = (self._velocity() - old_v) / self.dt
        collisions = ((CollisionEvent(self._frame, 7, "vehicle.audi.a2", 1500.0 * self._speed),)
                      if self._steps in self.collide_on_steps else ())
        invasions = (LaneInvasionEvent(self._frame, ("Broken",)),) if self._steps in self.invade_on_steps else ()
        snap = self._snapshot(collisions, invasions)
        return snap if camera else dataclasses.replace(snap, camera=None)  # like the simulator: no frame

    def close(self) -> None:
        self.closed += 1

    # -- internals -------------------------------------------------------------------------------------

    def _velocity(self) -> np.ndarray:
        r = math.radians(self._pose[2])
        return np.array([self._speed * math.cos(r), self._speed * math.sin(r), 0.0])

    def camera(self) -> np.ndarray:
        """The frame encodes the tick (pixel (0, 0)) and x (the other rows), so tests can tell frames apart."""
        cam = np.zeros(self.frame_shape, np.uint8)
        cam[0, 0] = self._frame % 256
        cam[1:, :] = int(self._pose[0] * 10) % 256
        return cam

    def _snapshot(self, collisions, invasions) -> Snapshot:
        x, y, yaw = self._pose
        cam = self.camera()
        ego = ActorState(
            id=1, type_id="vehicle.tesla.model3", location=np.array([x, y, 0.0]),
            rotation=np.array([0.0, yaw, 0.0]), velocity=self._velocity(), acceleration=self._accel.copy(),
            angular_velocity=np.zeros(3), extent=EGO_EXTENT.copy(),
        )
        return Snapshot(frame=self._frame, timestamp=self._frame * self.dt, ego=ego, vehicles=self.npcs,
                        camera=cam, collisions=tuple(collisions), lane_invasions=tuple(invasions),
                        obstacle=front_reading(self._frame, x, y, yaw, EGO_EXTENT[0], self.obstacle, self.npcs))



def npc(x: float, y: float, yaw: float = 180.0, speed: float = 0.0, extent=(2.0, 0.95, 0.8)) -> Vehicles:
    """One NPC as a ``Vehicles`` structure (CARLA frame)."""
    r = math.radians(yaw)
    return Vehicles(ids=np.array([2], np.int64), location=np.array([[x, y, 0.0]]), yaw=np.array([float(yaw)]),
                    velocity=np.array([[speed * math.cos(r), speed * math.sin(r), 0.0]]),
                    extent=np.array([extent], dtype=np.float64))
