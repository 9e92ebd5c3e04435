"""The RPC calls the server answers, each with the exact result type the 0.9.16 client reads.

Every handler returns an already wrapped result (:func:`rpc.value`, :func:`rpc.void` or :class:`rpc.Raw`);
raising :class:`rpc.CallError` (or a ``KeyError`` / ``ValueError``) becomes a typed error of the call's
result type, which the client raises as ``RuntimeError``. Calls not in :data:`HANDLERS` get such an error
too (``void`` / ``value`` shape chosen by :data:`VOID_CALLS`), and are logged once each.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from jtd3.carla_server import layouts as L
from jtd3.carla_server import rpc
from jtd3.carla_server.actors import Actor
from jtd3.carla_server.commands import apply_batch, spawn, vehicle_control
from jtd3.carla_server.sensors import SpawnError
from jtd3.carla_server.world import SPECTATOR_ID, WORLD_STREAM

if TYPE_CHECKING:
    from jtd3.carla_server.server import CarlaServer

__all__ = ["ERRORS", "HANDLERS", "VERSION", "VOID_CALLS"]

log = logging.getLogger(__name__)

VERSION = "0.9.16"

# Calls whose result is Response<void> (everything else unknown is answered as Response<T> with an error).
VOID_CALLS = frozenset({
    "load_new_episode", "load_map_layer", "unload_map_layer", "copy_opendrive_to_file", "set_weather_parameters",
    "apply_physics_control", "set_vehicle_light_state", "open_vehicle_door", "close_vehicle_door",
    "set_wheel_steer_direction", "set_actor_location", "set_actor_transform", "set_actor_target_velocity",
    "set_actor_target_angular_velocity", "enable_actor_constant_velocity", "disable_actor_constant_velocity",
    "add_actor_impulse", "add_actor_impulse_at_location", "add_actor_force", "add_actor_force_at_location",
    "add_actor_angular_impulse", "add_actor_torque", "set_actor_simulate_physics", "set_actor_collisions",
    "set_actor_dead", "set_actor_enable_gravity", "set_actor_autopilot", "show_vehicle_debug_telemetry",
    "apply_control_to_vehicle", "apply_ackermann_control_to_vehicle", "apply_ackermann_controller_settings",
    "apply_control_to_walker", "set_bones_transform", "blend_pose", "get_pose_from_animation",
    "set_traffic_light_state", "set_traffic_light_green_time", "set_traffic_light_yellow_time",
    "set_traffic_light_red_time", "freeze_traffic_light", "reset_traffic_light_group", "reset_all_traffic_lights",
    "freeze_all_traffic_lights", "stop_recorder", "stop_replayer", "set_replayer_time_factor",
    "set_replayer_ignore_hero", "set_replayer_ignore_spectator", "draw_debug_shape", "update_lights_state",
    "update_day_night_cycle", "enable_environment_objects", "destroy_traffic_manager", "enable_carsim",
    "use_carsim_road", "enable_chrono_physics", "enable_pedestrian_navigation", "set_pedestrians_cross_factor",
    "set_pedestrians_seed", "apply_color_texture_to_objects", "apply_float_color_texture_to_objects",
    "apply_textures_to_objects", "enable_sensor_for_ros", "disable_sensor_for_ros", "send",
})


def _destroy(s: CarlaServer, actor_id: int) -> list:
    if not s.world.destroy(int(actor_id)):
        return rpc.error_value(f"Actor {actor_id} not found (destroy_actor)")
    return rpc.value(True)


def _set_settings(s: CarlaServer, settings: list) -> list:
    s.set_settings(settings)
    return rpc.value(s.world.frame)


def _vehicle(s: CarlaServer, actor_id: int) -> Actor:
    """A vehicle, alive or destroyed recently (see ``World.actor_or_destroyed``)."""
    a, _ = s.world.actor_or_destroyed(int(actor_id))
    if not a.is_vehicle:
        raise KeyError(f"actor {actor_id} is not a vehicle")
    return a


def _apply_control(s: CarlaServer, actor_id: int, control: list) -> list:
    v = _vehicle(s, actor_id)
    v.control, v.control_tuple = vehicle_control(control)
    return rpc.void()


def _set_physics(s: CarlaServer, actor_id: int, enabled: bool) -> list:
    s.world.actor_or_destroyed(int(actor_id))[0].simulate_physics = bool(enabled)
    return rpc.void()


def _autopilot(s: CarlaServer, actor_id: int, enabled: bool) -> list:
    _vehicle(s, actor_id).autopilot = bool(enabled)
    return rpc.void()


def _teleport(s: CarlaServer, actor_id: int, transform: list) -> list:
    s.teleport(int(actor_id), L.transform_tuple(transform))
    return rpc.void()


def _bounding_box(s: CarlaServer, actor_id: int, *_: Any) -> list:
    a, _alive = s.world.actor_or_destroyed(int(actor_id))
    return rpc.value(L.bounding_box_object(a.extent, a.id))


def _load_episode(s: CarlaServer, map_name: str, reset_settings: bool = True, *_: Any) -> list:
    s.load_episode(str(map_name), bool(reset_settings))
    return rpc.void()


def _tm_running(s: CarlaServer, port: int) -> list:
    return rpc.value(int(port) in s.traffic_managers)


def _tm_get(s: CarlaServer, port: int) -> list:
    return rpc.value([s.traffic_managers.get(int(port), ""), int(port) if int(port) in s.traffic_managers else 0])


def _tm_add(s: CarlaServer, info: list) -> list:
    host, port = info
    s.traffic_managers[int(port)] = str(host)
    return rpc.value(True)


def _tm_destroy(s: CarlaServer, port: int) -> list:
    s.traffic_managers.pop(int(port), None)
    return rpc.void()


def _light_state(s: CarlaServer, actor_id: int) -> list:
    _vehicle(s, actor_id)  # the lights are always off (VehicleLightState::None)
    return rpc.value(0)


def _set_light_state(s: CarlaServer, actor_id: int, *_: Any) -> list:
    _vehicle(s, actor_id)  # accepted, not rendered
    return rpc.void()


def _weather(s: CarlaServer) -> list:
    return rpc.value([s.weather[name] for name in L.WEATHER_FIELDS])


def _set_weather(s: CarlaServer, weather: list) -> list:
    for name, v in zip(L.WEATHER_FIELDS, weather):
        s.weather[name] = float(v)
    return rpc.void()


HANDLERS: dict[str, Callable[..., Any]] = {
    "version": lambda s: rpc.value(VERSION),
    "get_episode_info": lambda s: rpc.value([s.world.episode_id, [s.streams.token(WORLD_STREAM)]]),
    "get_sensor_token": lambda s, stream_id: rpc.value([s.streams.expect(int(stream_id))]),
    "get_map_info": lambda s: rpc.value([s.map_path, [L.transform_object(t) for t in s.world.spawn_points]]),
    "get_map_data": lambda s: rpc.value(s.world.opendrive),
    "get_available_maps": lambda s: rpc.value([s.map_path]),
    "get_required_files": lambda s, *_: rpc.value([]),
    "load_new_episode": _load_episode,
    "get_episode_settings": lambda s: rpc.value(L.settings_object(s.world.settings)),
    "set_episode_settings": _set_settings,
    "tick_cue": lambda s: rpc.value(s.tick()),
    "get_weather_parameters": _weather,
    "set_weather_parameters": _set_weather,
    "query_lights_state": lambda s, *_: rpc.value([]),
    "update_lights_state": lambda s, *_: rpc.void(),
    "reset_all_traffic_lights": lambda s: rpc.void(),
    "freeze_all_traffic_lights": lambda s, *_: rpc.void(),
    "get_vehicle_light_states": lambda s: rpc.value([[a.id, 0] for a in s.world.actors.values() if a.is_vehicle]),
    "get_vehicle_light_state": _light_state,
    "set_vehicle_light_state": _set_light_state,
    "is_traffic_manager_running": _tm_running,
    "get_traffic_manager_running": _tm_get,
    "add_traffic_manager_running": _tm_add,
    "destroy_traffic_manager": _tm_destroy,
    "get_actor_definitions": lambda s: rpc.value([bp.definition() for bp in s.world.blueprints.values()]),
    "get_spectator": lambda s: rpc.value(s.actor_object(s.world.actors[SPECTATOR_ID])),
    "spawn_actor": lambda s, description, transform: rpc.value(spawn(s, description, transform)),
    "spawn_actor_with_parent": lambda s, description, transform, parent, *_: rpc.value(
        spawn(s, description, transform, int(parent))),
    "destroy_actor": _destroy,
    "get_actors_by_id": lambda s, ids: rpc.value(
        [s.actor_object(s.world.actors[int(i)]) for i in ids if int(i) in s.world.actors]),
    "get_actor_bounding_box": _bounding_box,
    "apply_control_to_vehicle": _apply_control,
    "apply_batch": apply_batch,
    "set_actor_simulate_physics": _set_physics,
    "set_actor_autopilot": _autopilot,
    "set_actor_transform": _teleport,
    "set_actor_location": lambda s, actor_id, loc: _teleport(
        s, actor_id, [loc, [0.0, s.world.world_transform(s.world.actors[int(actor_id)])[4], 0.0]]),
}

ERRORS = (KeyError, ValueError, TypeError, IndexError, SpawnError, rpc.CallError)
