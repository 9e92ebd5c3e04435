"""The ``carla`` client wheel seen from jtd3: importing it, checking versions, building carla values and commands.

Pure helpers: none of them talks to a server (the wheel's value types build offline).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from jtd3.backends.base import VehicleControl
from jtd3.backends.carla.errors import CarlaVersionError

__all__ = [
    "check_versions",
    "choose_npc_spawns",
    "destroy_commands",
    "import_carla",
    "npc_spawn_commands",
    "parse_version",
    "restored_settings",
    "sync_settings",
    "to_carla_control",
]

log = logging.getLogger(__name__)


def import_carla() -> Any:
    """Import the ``carla`` client wheel, or explain how to get it."""
    try:
        import carla  # noqa: PLC0415 (lazy on purpose: jtd3 imports without the wheel)
    except ImportError as e:
        raise ImportError(
            "the CARLA backend needs the carla 0.9.16 client wheel (Linux/Windows x86_64, CPython 3.10-3.12): "
            "pip install 'jtd3[carla]' (or pip install carla==0.9.16); or use the embedded simulator: --env sim"
        ) from e
    return carla


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``"0.9.16"`` / ``"0.9.16-12-gabcdef"`` -> ``(0, 9, 16)``; ``None`` if there is no X.Y.Z prefix."""
    m = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def check_versions(client_version: str, server_version: str, allow_mismatch: bool) -> None:
    """Raise :class:`CarlaVersionError` unless client and server share X.Y.Z (or warn if ``allow_mismatch``)."""
    c, s = parse_version(client_version), parse_version(server_version)
    if c is not None and c == s:
        return
    msg = (
        f"CARLA server version {server_version!r} differs from the carla client wheel {client_version!r}; "
        f"install the matching wheel (pip install carla=={server_version.split('-')[0]}) or start a CARLA "
        f"{client_version} server"
    )
    if not allow_mismatch:
        raise CarlaVersionError(msg + " (carla.allow_version_mismatch=true only warns)")
    log.warning("%s; continuing because carla.allow_version_mismatch is set", msg)


def to_carla_control(carla: Any, control: VehicleControl) -> Any:
    """``carla.VehicleControl`` from a (clamped) :class:`jtd3.backends.base.VehicleControl`; nothing else builds one."""
    if not isinstance(control, VehicleControl):
        raise TypeError(f"expected jtd3.backends.base.VehicleControl, got {type(control).__name__}")
    return carla.VehicleControl(
        throttle=control.throttle,
        steer=control.steer,
        brake=control.brake,
        hand_brake=bool(control.hand_brake),
        reverse=bool(control.reverse),
        manual_gear_shift=False,
        gear=0,
    )



def sync_settings(settings: Any, fixed_delta_seconds: float, no_rendering: bool) -> Any:
    """Turn a ``carla.WorldSettings`` (a fresh copy from ``get_settings()``) into jtd3's settings, in place."""
    settings.synchronous_mode = True
    settings.fixed_delta_seconds = float(fixed_delta_seconds)
    settings.no_rendering_mode = bool(no_rendering)
    return settings


def restored_settings(original: Any, mode: str) -> Any:
    """The settings ``close()`` applies: the saved ones, or those with synchronous mode and the fixed step off."""
    if mode == "original":
        return original
    if mode == "asynchronous":
        original.synchronous_mode = False
        original.fixed_delta_seconds = None
        return original
    raise ValueError(f"restore_settings = {mode!r}: must be one of 'original', 'asynchronous'")


def destroy_commands(carla: Any, actor_ids: Sequence[int]) -> list[Any]:
    """One ``command.DestroyActor`` per id, for a single ``apply_batch_sync``."""
    return [carla.command.DestroyActor(int(i)) for i in actor_ids]


def npc_spawn_commands(carla: Any, blueprints: Sequence[Any], transforms: Sequence[Any], tm_port: int) -> list:
    """``SpawnActor(bp, tf).then(SetAutopilot(FutureActor, True, tm_port))`` for each NPC (one batch)."""
    if len(blueprints) != len(transforms):
        raise ValueError(f"{len(blueprints)} blueprints for {len(transforms)} transforms")
    cmd = carla.command
    return [
        cmd.SpawnActor(bp, tf).then(cmd.SetAutopilot(cmd.FutureActor, True, int(tm_port)))
        for bp, tf in zip(blueprints, transforms)
    ]


def choose_npc_spawns(
    spawn_xy: np.ndarray, ego_xy: tuple[float, float], count: int, min_distance: float, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``count`` spawn points (rows of ``spawn_xy``, metres) at least ``min_distance`` from the ego.

    Deterministic for a given generator state. Raises ``ValueError`` when too few points qualify.
    """
    if count < 0:
        raise ValueError(f"num_vehicles must be >= 0, got {count}")
    if count == 0:
        return np.zeros(0, np.int64)
    d = np.hypot(spawn_xy[:, 0] - ego_xy[0], spawn_xy[:, 1] - ego_xy[1]) if len(spawn_xy) else np.zeros(0)
    candidates = np.flatnonzero(d >= min_distance)
    if count > len(candidates):
        raise ValueError(
            f"num_vehicles = {count}, but only {len(candidates)} of the map's {len(spawn_xy)} spawn points are "
            f"at least {min_distance:g} m from the ego (carla.npc_min_distance_m)"
        )
    return candidates[rng.permutation(len(candidates))[:count]]
