"""Byte layouts of CARLA 0.9.16's streamed data and msgpack shapes of its RPC types.

Streamed (little-endian, packed; read from the DWARF debug information of the 0.9.16 wheel's
``libcarla.*.so`` with ``llvm-dwarfdump``, pinned by tests/test_carla_protocol_layouts.py against the wheel):

- sensor header (``SensorHeaderSerializer::Header``, 48 bytes): ``u64 sensor_type, u64 frame, f64 timestamp``,
  transform ``6 x f32`` (location x, y, z; rotation pitch, yaw, roll). ``sensor_type`` is the index of the
  sensor in the wheel's ``SensorRegistry`` (:data:`SENSOR_TYPES`).
- world state (``EpisodeStateSerializer``): header (36 bytes) ``u64 episode_id, f64 platform_timestamp,
  f32 delta_seconds, 3 x i32 map_origin, u32 simulation_state``, then one ``ActorDynamicState`` (119 bytes)
  per actor: ``u32 id, u8 actor_state, transform 6 x f32, velocity, angular_velocity, acceleration 3 x f32``,
  then a 54-byte union; for vehicles ``PackedVehicleControl`` (throttle, steer, brake f32, hand_brake,
  reverse, manual_gear_shift u8, gear i32), ``f32 speed_limit, u8 traffic_light_state, u8
  has_traffic_light, u32 traffic_light_id, u8 failure_state``.
- image (``ImageSerializer``): ``u32 width, u32 height, f32 fov`` then BGRA bytes.
- collision (``CollisionEventSerializer``): msgpack ``[self_actor, other_actor, normal_impulse]``.
- obstacle (``ObstacleDetectionEventSerializer``): msgpack ``[self_actor, other_actor, distance]``.

msgpack (``MSGPACK_DEFINE_ARRAY`` member order): ``Location``/``Vector3D`` ``[x, y, z]``, ``Rotation``
``[pitch, yaw, roll]``, ``Transform`` ``[location, rotation]``, ``BoundingBox`` ``[location, extent,
rotation, actor_id]``, ``rpc::Actor`` ``[id, parent_id, description, bounding_box, semantic_tags,
stream_token]``, ``ActorDescription`` ``[uid, id, [[attr id, type, value], ...]]``, ``ActorDefinition``
``[uid, id, tags, attributes]`` with ``ActorAttribute`` ``[id, type, value, recommended_values,
is_modifiable, restrict_to_recommended]``, ``EpisodeSettings`` (11 members, :data:`SETTINGS_FIELDS`).
"""

from __future__ import annotations

import math
import struct

import msgpack

__all__ = [
    "ACTOR_DYNAMIC_STATE", "ATTRIBUTE_TYPES", "EPISODE_HEADER", "IMAGE_HEADER", "SENSOR_HEADER",
    "SENSOR_TYPES", "SETTINGS_FIELDS", "WEATHER_FIELDS", "actor_dynamic_state", "actor_object",
    "collision_payload", "episode_header", "image_payload", "obstacle_payload", "sensor_header",
]

SENSOR_HEADER = struct.Struct("<QQd6f")  # 48 bytes
EPISODE_HEADER = struct.Struct("<Qdf3iI")  # 36 bytes
ACTOR_DYNAMIC_STATE = struct.Struct("<IB6f3f3f3f54s")  # 119 bytes
VEHICLE_DATA = struct.Struct("<3f3BifBBIB")  # 30 bytes of the 54-byte union
IMAGE_HEADER = struct.Struct("<IIf")  # 12 bytes

# Index in the 0.9.16 wheel's SensorRegistry (the order of its CompositeSerializer's type list).
SENSOR_TYPES = {
    "sensor.other.collision": 0,
    "sensor.camera.depth": 1,
    "sensor.camera.normals": 2,
    "sensor.camera.dvs": 3,
    "sensor.other.gnss": 4,
    "sensor.other.imu": 5,
    "sensor.other.lane_invasion": 6,
    "sensor.other.obstacle": 7,
    "sensor.camera.optical_flow": 8,
    "sensor.other.radar": 9,
    "sensor.lidar.ray_cast_semantic": 10,
    "sensor.lidar.ray_cast": 11,
    "sensor.other.rss": 12,
    "sensor.camera.rgb": 13,
    "sensor.camera.semantic_segmentation": 14,
    "sensor.camera.instance_segmentation": 15,
    "sensor.camera.cosmos_visualization": 16,
    "world_observer": 17,
}

# rpc::ActorAttributeType
ATTRIBUTE_TYPES = {"bool": 1, "int": 2, "float": 3, "string": 4, "rgbcolor": 5}

# rpc::ActorState
ACTOR_ACTIVE = 1

SETTINGS_FIELDS = (
    "synchronous_mode", "no_rendering_mode", "fixed_delta_seconds", "substepping", "max_substep_delta_time",
    "max_substeps", "max_culling_distance", "deterministic_ragdolls", "tile_stream_distance",
    "actor_active_distance", "spectator_as_ego",
)

WEATHER_FIELDS = (
    "cloudiness", "precipitation", "precipitation_deposits", "wind_intensity", "sun_azimuth_angle",
    "sun_altitude_angle", "fog_density", "fog_distance", "fog_falloff", "wetness", "scattering_intensity",
    "mie_scattering_scale", "rayleigh_scattering_scale", "dust_storm",
)


def sensor_header(sensor_type: int, frame: int, timestamp: float, transform: tuple[float, ...]) -> bytes:
    return SENSOR_HEADER.pack(sensor_type, frame, timestamp, *transform)


def episode_header(episode_id: int, platform_timestamp: float, delta_seconds: float,
                   map_origin: tuple[int, int, int] = (0, 0, 0), simulation_state: int = 0) -> bytes:
    return EPISODE_HEADER.pack(episode_id, platform_timestamp, delta_seconds, *map_origin, simulation_state)


def vehicle_data(control: tuple[float, float, float, bool, bool, bool, int], speed_limit: float) -> bytes:
    """The vehicle member of ``ActorDynamicState``'s union (no traffic light: state Unknown = 4)."""
    throttle, steer, brake, hand_brake, reverse, manual, gear = control
    data = VEHICLE_DATA.pack(throttle, steer, brake, hand_brake, reverse, manual, gear, speed_limit, 4, 0, 0, 0)
    return data.ljust(54, b"\0")


def actor_dynamic_state(actor_id: int, transform: tuple[float, ...], velocity: tuple[float, float, float],
                        angular_velocity: tuple[float, float, float], acceleration: tuple[float, float, float],
                        union: bytes = b"") -> bytes:
    return ACTOR_DYNAMIC_STATE.pack(actor_id, ACTOR_ACTIVE, *transform, *velocity, *angular_velocity,
                                    *acceleration, union)


def image_payload(header: bytes, width: int, height: int, fov: float, bgra: bytes) -> bytes:
    return header + IMAGE_HEADER.pack(width, height, fov) + bgra


def collision_payload(header: bytes, self_actor: list, other_actor: list, impulse: tuple[float, float, float]) -> bytes:
    return header + msgpack.packb([self_actor, other_actor, list(impulse)], use_bin_type=True)


def obstacle_payload(header: bytes, self_actor: list, other_actor: list, distance: float) -> bytes:
    return header + msgpack.packb([self_actor, other_actor, float(distance)], use_bin_type=True)


def transform_object(t: tuple[float, ...]) -> list:
    """msgpack ``Transform`` from ``(x, y, z, pitch, yaw, roll)``."""
    return [[float(t[0]), float(t[1]), float(t[2])], [float(t[3]), float(t[4]), float(t[5])]]


def transform_tuple(obj: list) -> tuple[float, ...]:
    """``(x, y, z, pitch, yaw, roll)`` from a msgpack ``Transform``."""
    (x, y, z), (pitch, yaw, roll) = obj[0][:3], obj[1][:3]
    vals = tuple(float(v) for v in (x, y, z, pitch, yaw, roll))
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"transform must be finite, got {vals}")
    return vals


def bounding_box_object(extent: tuple[float, float, float], actor_id: int = 0,
                        centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> list:
    return [list(map(float, centre)), list(map(float, extent)), [0.0, 0.0, 0.0], int(actor_id)]


def actor_object(actor_id: int, parent_id: int, uid: int, type_id: str, attributes: list[list],
                 extent: tuple[float, float, float], semantic_tags: bytes, stream_token: bytes) -> list:
    """msgpack ``rpc::Actor``."""
    return [actor_id, parent_id, [uid, type_id, attributes], bounding_box_object(extent, actor_id),
            semantic_tags, stream_token]


def optional(v):
    """CARLA's msgpack ``boost::optional``: ``[false]`` when empty, ``[true, value]`` otherwise."""
    return [False] if v is None else [True, v]


def from_optional(obj):
    if isinstance(obj, list):
        return obj[1] if len(obj) == 2 and obj[0] else None
    return obj


def settings_object(settings: dict) -> list:
    """msgpack ``EpisodeSettings`` (``fixed_delta_seconds`` is a ``boost::optional<double>``)."""
    return [optional(settings[name]) if name == "fixed_delta_seconds" else settings[name] for name in SETTINGS_FIELDS]


def settings_dict(obj: list, defaults: dict) -> dict:
    out = dict(defaults)
    for name, v in zip(SETTINGS_FIELDS, obj):
        out[name] = from_optional(v) if name == "fixed_delta_seconds" else v
    return out
