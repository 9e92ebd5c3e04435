"""The contract between a world backend and :class:`jtd3.envs.DrivingEnv`.

Two backends implement :class:`Backend`: the embedded simulator (``jtd3.backends.sim``, the default) and a CARLA
0.9.16 server (``jtd3.backends.carla.session``, the only module that imports ``carla`` at runtime). Everything
that crosses this boundary is plain Python / NumPy (CARLA objects do not pickle and must never reach an
observation, ``info`` dict or the replay buffer).

Conventions (CARLA's, everywhere in jtd3): metres, seconds, left-handed world frame (x east, y south, z up),
angles in degrees, yaw measured from +x towards +y (clockwise seen from above), fixed step 0.05 s.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "ActorState",
    "Backend",
    "CollisionEvent",
    "LaneInvasionEvent",
    "ObstacleReading",
    "Pose",
    "Snapshot",
    "VehicleControl",
    "Vehicles",
]


@dataclasses.dataclass(frozen=True)
class VehicleControl:
    """The fields of ``carla.VehicleControl`` the agent drives, always inside their ranges.

    ``carla.VehicleControl`` does not clamp; build it from this class only.
    """

    throttle: float = 0.0  # [0, 1]
    steer: float = 0.0  # [-1, 1], positive steers right (clockwise yaw, CARLA)
    brake: float = 0.0  # [0, 1]
    hand_brake: bool = False
    reverse: bool = False

    def __post_init__(self) -> None:
        for name in ("throttle", "steer", "brake"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise ValueError(f"VehicleControl.{name} must be finite, got {v!r}")
        object.__setattr__(self, "throttle", min(max(float(self.throttle), 0.0), 1.0))
        object.__setattr__(self, "brake", min(max(float(self.brake), 0.0), 1.0))
        object.__setattr__(self, "steer", min(max(float(self.steer), -1.0), 1.0))

    @classmethod
    def from_action(cls, action: np.ndarray | tuple[float, float]) -> "VehicleControl":
        """``[steer, throttle_brake]`` in [-1, 1] -> control (values outside [-1, 1] are clamped).

        ``throttle_brake > 0`` is throttle, ``< 0`` is brake (magnitude). NaN/Inf raise ``ValueError``.
        """
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,):
            raise ValueError(f"action must have shape (2,) = [steer, throttle_brake], got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        steer, tb = np.clip(a, -1.0, 1.0)
        return cls(throttle=max(tb, 0.0), steer=float(steer), brake=max(-tb, 0.0))


@dataclasses.dataclass(frozen=True)
class Pose:
    """A spawn pose: location in metres, yaw in degrees (CARLA frame)."""

    x: float
    y: float
    yaw: float
    z: float = 0.0


@dataclasses.dataclass
class ActorState:
    """What CARLA's actor API reports for a vehicle, as NumPy arrays."""

    id: int
    type_id: str  # e.g. "vehicle.tesla.model3"
    location: np.ndarray  # (3,) x, y, z in metres
    rotation: np.ndarray  # (3,) pitch, yaw, roll in degrees (carla.Rotation order)
    velocity: np.ndarray  # (3,) m/s, world frame
    acceleration: np.ndarray  # (3,) m/s^2, world frame
    angular_velocity: np.ndarray  # (3,) deg/s, world frame
    extent: np.ndarray  # (3,) bounding-box half sizes in metres (carla.BoundingBox.extent)

    @property
    def speed(self) -> float:
        return float(np.linalg.norm(self.velocity))

    @property
    def yaw(self) -> float:
        return float(self.rotation[1])


@dataclasses.dataclass
class Vehicles:
    """Every vehicle other than the ego, as a structure of arrays (N may be 0)."""

    ids: np.ndarray  # (N,) int64
    location: np.ndarray  # (N, 3)
    yaw: np.ndarray  # (N,) degrees
    velocity: np.ndarray  # (N, 3)
    extent: np.ndarray  # (N, 3) half sizes

    @classmethod
    def empty(cls) -> "Vehicles":
        return cls(
            ids=np.zeros(0, np.int64),
            location=np.zeros((0, 3)),
            yaw=np.zeros(0),
            velocity=np.zeros((0, 3)),
            extent=np.zeros((0, 3)),
        )

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclasses.dataclass(frozen=True)
class CollisionEvent:
    """``sensor.other.collision``: the other actor and the normal impulse's norm (N*s), as CARLA gives."""

    frame: int
    other_id: int  # -1 for static geometry
    other_type: str  # e.g. "vehicle.audi.a2", "static.building", "static.pole"
    intensity: float


@dataclasses.dataclass(frozen=True)
class LaneInvasionEvent:
    """``sensor.other.lane_invasion``: the marking types crossed (``carla.LaneMarkingType`` names)."""

    frame: int
    crossed_markings: tuple[str, ...]  # e.g. ("Broken",), ("Solid",), ("SolidSolid",)


@dataclasses.dataclass(frozen=True)
class ObstacleReading:
    """``sensor.other.obstacle`` mounted at the front bumper's centre, looking along the ego's heading: the
    nearest dynamic actor hit by a sphere of ``hit_radius`` swept up to ``distance`` metres (CARLA's
    ``ObstacleDetectionEvent``), with that actor's velocity in the same frame (a client reads it from the
    world snapshot by the event's ``other_actor.id``)."""

    frame: int
    other_id: int
    distance: float  # m the sphere travelled before touching the actor: the bumper gap minus up to hit_radius
    other_velocity: np.ndarray  # (3,) m/s, world frame


@dataclasses.dataclass
class Snapshot:
    """The world after one tick."""

    frame: int
    timestamp: float  # simulated seconds since the world was loaded
    ego: ActorState
    vehicles: Vehicles
    camera: np.ndarray | None  # uint8 (H, W) grayscale at the backend's configured camera size (None: not asked for)
    collisions: tuple[CollisionEvent, ...] = ()  # events during the last tick only
    lane_invasions: tuple[LaneInvasionEvent, ...] = ()
    obstacle: ObstacleReading | None = None  # the front obstacle sensor of this tick; None: nothing in range


@runtime_checkable
class Backend(Protocol):
    """A world the environment drives one fixed step at a time (synchronous mode)."""

    @property
    def opendrive(self) -> str:
        """The loaded town's OpenDRIVE text (``carla.Map.to_opendrive()`` on a server)."""
        ...

    def reset(self, spawn: Pose, num_vehicles: int, seed: int) -> Snapshot:
        """Remove every actor, spawn the ego at ``spawn`` and ``num_vehicles`` NPCs, tick once."""
        ...

    def step(self, control: VehicleControl, camera: bool = True) -> Snapshot:
        """Apply ``control`` to the ego and advance one fixed step. ``camera=False``: the caller will not read
        this tick's frame, so the backend may leave ``Snapshot.camera`` None (the embedded simulator then skips
        rendering it; a CARLA server sends every frame anyway)."""
        ...

    def camera(self) -> np.ndarray:
        """The camera frame of the current state, the last tick's (rendered now if that tick skipped it)."""
        ...

    def close(self) -> None:
        """Destroy every actor and restore the world; safe to call twice."""
        ...
