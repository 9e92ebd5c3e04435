"""``rpc::Command`` batches (``apply_batch``): spawn with follow-up commands, destroy, controls, autopilot.

A command is ``[[variant index, fields]]``: the index is the position of its type in the 0.9.16 wheel's
``boost::variant`` (pinned by tests/test_carla_protocol_layouts.py). ``apply_batch`` answers a bare
``vector<CommandResponse>`` (no ``Response`` wrapper): one ``Response<ActorId>`` per command.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from jtd3.backends.base import VehicleControl
from jtd3.carla_server import layouts as L
from jtd3.carla_server import rpc

if TYPE_CHECKING:
    from jtd3.carla_server.server import CarlaServer

__all__ = ["apply_batch", "apply_command", "spawn", "vehicle_control"]

log = logging.getLogger(__name__)

# Command variant indices (boost::variant order of rpc::Command::CommandType in the 0.9.16 wheel).
SPAWN, DESTROY, APPLY_VEHICLE_CONTROL, APPLY_TRANSFORM, SET_SIMULATE_PHYSICS, SET_AUTOPILOT = 0, 1, 2, 6, 14, 16
SET_VEHICLE_LIGHT_STATE = 18
FUTURE_ACTOR = 0


def vehicle_control(obj: list) -> tuple[VehicleControl, tuple]:
    throttle, steer, brake, hand_brake, reverse, manual, gear = (list(obj) + [0, 0, 0, False, False, False, 0])[:7]
    control = VehicleControl(throttle=float(throttle), steer=float(steer), brake=float(brake),
                             hand_brake=bool(hand_brake), reverse=bool(reverse))
    return control, (control.throttle, control.steer, control.brake, control.hand_brake, control.reverse,
                     bool(manual), int(gear))


def spawn(s: CarlaServer, description: list, transform: list, parent: int = 0) -> list:
    _uid, type_id, attributes = description[:3]
    actor = s.world.spawn(str(type_id), list(attributes), L.transform_tuple(transform), int(parent))
    return s.actor_object(actor)


def apply_command(s: CarlaServer, command: list) -> int:
    """Run one ``rpc::Command`` ``[[variant index, fields]]``; returns the actor id (raises on failure).

    ``SpawnActor`` fields: ``[description, transform, parent (optional), attachment_type, socket_name,
    do_after]``; ``FutureActor`` (0) in a ``do_after`` command stands for the spawned actor.
    """
    index, fields = command[0]
    w = s.world
    if index == SPAWN:
        description, transform, parent = fields[:3]
        do_after = fields[5] if len(fields) > 5 else []
        parent_id = L.from_optional(parent) or 0
        actor_id = int(spawn(s, description, transform, int(parent_id))[0])
        for sub in do_after:
            sub_index, sub_fields = sub[0]
            sub_fields = list(sub_fields)
            if sub_fields and sub_fields[0] == FUTURE_ACTOR:
                sub_fields[0] = actor_id
            try:
                apply_command(s, [[sub_index, sub_fields]])
            except (KeyError, ValueError, rpc.CallError) as e:
                log.warning("command after spawning actor %d failed: %s", actor_id, e)
        return actor_id
    actor_id = int(fields[0])
    if index == DESTROY:
        if not w.destroy(actor_id):
            raise rpc.CallError(f"Actor {actor_id} not found")
    elif index == APPLY_VEHICLE_CONTROL:
        v = w.vehicle(actor_id)
        v.control, v.control_tuple = vehicle_control(fields[1])
    elif index == SET_AUTOPILOT:
        w.vehicle(actor_id).autopilot = bool(fields[1])
    elif index == SET_SIMULATE_PHYSICS:
        w.actors[actor_id].simulate_physics = bool(fields[1])
    elif index == APPLY_TRANSFORM:
        s.teleport(actor_id, L.transform_tuple(fields[1]))
    elif index == SET_VEHICLE_LIGHT_STATE:
        w.vehicle(actor_id)
    else:
        raise rpc.CallError(f"command {index} (rpc::Command variant index) is not supported by the jtd3 server")
    return actor_id


def apply_batch(s: CarlaServer, commands: list, do_tick: bool = False) -> rpc.Raw:
    out = []
    for command in commands:
        try:
            out.append(rpc.value(apply_command(s, command)))
        except (KeyError, ValueError, rpc.CallError) as e:
            out.append(rpc.error_value(str(e.args[0]) if e.args else str(e)))
    if do_tick:
        s.tick()
    return rpc.Raw(out)
