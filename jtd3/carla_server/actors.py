"""The blueprint library the server offers and the actors it keeps (its registry's records).

Blueprints: the ego vehicle of :class:`jtd3.backends.sim.config.VehicleConfig`, the NPC vehicles of
:class:`jtd3.backends.sim.config.NpcConfig` (their bounding boxes), ``sensor.camera.rgb``, ``sensor.other.collision``
and ``sensor.other.lane_invasion`` (computed by the client from the map and the pushed state, as CARLA does) and
``sensor.other.obstacle``.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

from jtd3.backends.sim.config import NpcConfig, VehicleConfig
from jtd3.backends.sim.dynamics import EgoState
from jtd3.carla_server.layouts import ATTRIBUTE_TYPES

__all__ = ["Actor", "Blueprint", "blueprint_library"]

VEHICLE_TAG, NO_TAGS = bytes([14]), b""  # CityObjectLabel::Car in 0.9.16
_COLORS = ["255,255,255", "0,0,0", "200,20,20", "20,60,200", "120,120,120", "230,200,40"]


@dataclasses.dataclass(frozen=True)
class Attribute:
    id: str
    type: str  # bool | int | float | string | rgbcolor
    value: str
    recommended: tuple[str, ...] = ()
    modifiable: bool = True

    def definition(self) -> list:
        """msgpack ``rpc::ActorAttribute``."""
        return [self.id, ATTRIBUTE_TYPES[self.type], self.value, list(self.recommended), self.modifiable, False]


@dataclasses.dataclass(frozen=True)
class Blueprint:
    id: str
    tags: str
    attributes: tuple[Attribute, ...]
    extent: tuple[float, float, float] = (0.0, 0.0, 0.0)
    vehicle: VehicleConfig | None = None

    @property
    def uid(self) -> int:
        return zlib.crc32(self.id.encode()) & 0x7FFFFFFF

    def definition(self) -> list:
        """msgpack ``rpc::ActorDefinition``."""
        return [self.uid, self.id, self.tags, [a.definition() for a in self.attributes]]


def _vehicle(type_id: str, cfg: VehicleConfig, role: str = "") -> Blueprint:
    make, model = type_id.split(".")[1:3]
    attrs = (
        Attribute("role_name", "string", role or "autopilot"),
        Attribute("color", "rgbcolor", _COLORS[0], tuple(_COLORS)),
        Attribute("number_of_wheels", "int", "4", modifiable=False),
        Attribute("generation", "int", "2", modifiable=False),
        Attribute("base_type", "string", "car", modifiable=False),
        Attribute("object_type", "string", "", modifiable=False),
        Attribute("has_lights", "bool", "false", modifiable=False),
        Attribute("sticky_control", "bool", "true", ("true", "false")),
        Attribute("terramechanics", "bool", "false", ("true", "false")),
    )
    return Blueprint(type_id, f"{make},{model},vehicle", attrs, (0.5 * cfg.length, 0.5 * cfg.width, 0.5 * cfg.height), cfg)


def blueprint_library(vehicle: VehicleConfig, npc: NpcConfig) -> dict[str, Blueprint]:
    """Every blueprint by id (the ego's type first, then the NPC types not already present, then sensors)."""
    out = {vehicle.type_id: _vehicle(vehicle.type_id, vehicle)}
    for type_id, (ex, ey, ez) in zip(npc.blueprints, npc.extents):
        if type_id not in out:
            cfg = dataclasses.replace(vehicle, type_id=type_id, length=2 * ex, width=2 * ey, height=2 * ez,
                                      wheelbase=min(vehicle.wheelbase, 1.6 * ex), cg_to_rear=min(vehicle.cg_to_rear, 0.8 * ex),
                                      mass=npc.mass)
            out[type_id] = _vehicle(type_id, cfg)
    tick = Attribute("sensor_tick", "float", "0.0")
    role = Attribute("role_name", "string", "front")
    out["sensor.camera.rgb"] = Blueprint("sensor.camera.rgb", "sensor,camera,rgb", (
        Attribute("image_size_x", "int", "800"), Attribute("image_size_y", "int", "600"),
        Attribute("fov", "float", "90.0"), tick, role,
    ))
    out["sensor.other.collision"] = Blueprint("sensor.other.collision", "sensor,other,collision", (role,))
    out["sensor.other.lane_invasion"] = Blueprint("sensor.other.lane_invasion", "sensor,other,lane_invasion", (role,))
    out["sensor.other.obstacle"] = Blueprint("sensor.other.obstacle", "sensor,other,obstacle", (
        Attribute("distance", "float", "5"), Attribute("hit_radius", "float", "0.5"),
        Attribute("only_dynamics", "bool", "false"), Attribute("debug_linetrace", "bool", "false"), tick, role,
    ))
    return out


@dataclasses.dataclass
class Actor:
    """One actor of the world: a vehicle (with its dynamics state and last control), a sensor or the spectator.

    ``transform`` is ``(x, y, z, pitch, yaw, roll)``: world frame for vehicles and the spectator, relative to
    the parent for attached sensors.
    """

    id: int
    type_id: str
    attributes: list[list]  # msgpack ActorAttributeValue [[id, type, value], ...]
    transform: tuple[float, ...]
    blueprint: Blueprint | None = None
    parent: int = 0
    stream_id: int = 0
    state: EgoState | None = None  # vehicles
    control: Any = None  # jtd3.backends.base.VehicleControl of vehicles
    control_tuple: tuple = (0.0, 0.0, 0.0, False, False, False, 0)
    autopilot: bool = False
    simulate_physics: bool = True
    speed_limit_kmh: float = 30.0
    last_image_time: float = -1e9  # cameras: simulated time of the last frame sent

    @property
    def is_vehicle(self) -> bool:
        return self.type_id.startswith("vehicle.")

    @property
    def extent(self) -> tuple[float, float, float]:
        return self.blueprint.extent if self.blueprint is not None else (0.0, 0.0, 0.0)

    def attribute(self, name: str, default: str = "") -> str:
        for a in self.attributes:
            if a[0] == name:
                return str(a[2])
        return default

    def description(self) -> list:
        return [self.blueprint.uid if self.blueprint else 0, self.type_id, self.attributes]

    def semantic_tags(self) -> bytes:
        return VEHICLE_TAG if self.is_vehicle else NO_TAGS
