"""The CARLA 0.9.16 backend: the only module in jtd3 that talks to a CARLA server.

:class:`CarlaSession` implements :class:`jtd3.backends.base.Backend` on a real server. It keeps the server in
synchronous mode (fixed step ``fixed_delta_seconds``, 0.05 s by default), drives one ego vehicle with a
front RGB camera, a collision sensor and a lane-invasion sensor, spawns NPC vehicles under a seeded Traffic
Manager, and hands back plain NumPy/Python :class:`jtd3.backends.base.Snapshot` objects: no ``carla`` object ever
leaves this module (they do not pickle).

Lifecycle (each step is a known way for a CARLA client to leave a server frozen or crashed)::

    CarlaSession(config)   probe the port (msgpack-rpc "version" call on a raw socket, so the carla client is
                           never pointed at a program that is not CARLA: that aborts the process), connect
                           with a short timeout, check server/client versions, save the server's settings,
                           load_world_if_different(town, reset_settings=False), synchronous mode + fixed step,
                           Traffic Manager on an explicit port in synchronous mode, one tick.
    reset(spawn, n, seed)  tear the previous episode down, seed the TM, spawn the ego at ``spawn`` (bounded
                           retries), tick, spawn n NPCs in one batch with autopilot, attach the sensors, tick;
                           the Snapshot is matched on that tick's frame number.
    step(control)          apply the (already clamped) control, tick, match every sensor on the frame number.
    close()                stop every sensor, destroy the sensors, destroy the vehicles in one batch, tick,
                           restore the saved settings, Traffic Manager synchronous mode off. Also run on
                           exceptions (the episode part) and at interpreter exit (all of it).

Sensor data arrives on CARLA's threads. Each sensor has its own queue; data is matched to the tick's frame
number: older frames (late or duplicated) are dropped, newer ones are kept for their own tick, a missing
frame raises :class:`CarlaSensorTimeout` after ``sensor_timeout_s``. Event sensors (collision, lane invasion)
deliver everything up to and including the tick's frame; an event that arrives after its tick was collected
is reported with the next tick (its ``frame`` field tells which tick produced it).

A server timeout (``RuntimeError("time-out of ...")`` from the carla client) triggers a reconnect with at most
``reconnect_retries`` attempts; after that :class:`CarlaUnavailableError` says what to do. ``reset`` retries
itself after a successful reconnect; ``step`` raises :class:`CarlaEpisodeLost` (the episode's actors are gone;
call ``reset``).

Frames and units: CARLA's (metres, seconds, degrees; x east, y south, z up, left-handed; yaw clockwise seen
from above). See ``docs/carla.md`` for the design notes and measured numbers.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from jtd3.backends.base import (
    ActorState,
    CollisionEvent,
    LaneInvasionEvent,
    Pose,
    Snapshot,
    VehicleControl,
    Vehicles,
)
from jtd3.config import ConfigNode, check, choice, param

__all__ = [
    "CarlaConfig",
    "CarlaEpisodeLost",
    "CarlaError",
    "CarlaSensorTimeout",
    "CarlaSession",
    "ServerProcess",
    "CarlaSpawnError",
    "CarlaUnavailableError",
    "CarlaVersionError",
    "EventQueue",
    "FrameQueue",
    "bgra_to_gray",
    "import_carla",
    "is_timeout",
    "probe_carla_rpc",
    "to_carla_control",
]

log = logging.getLogger(__name__)

CAMERA_KINDS = ("front", "birdeye")


# ----------------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class CarlaConfig(ConfigNode):
    """Settings of one CARLA session (one server). Times in seconds, distances in metres, angles in degrees."""

    host: str = param("127.0.0.1", "CARLA server host")
    port: int = param(2000, "CARLA RPC port (-carla-rpc-port); the server also uses port+1 for sensor streams")
    timeout_s: float = param(5.0, "client timeout for connecting and for every RPC call (s)")
    probe: bool = param(
        True,
        "check with a raw msgpack-rpc 'version' call that a CARLA (rpclib) server answers before the carla "
        "client touches the port: the carla client aborts the process when another program answers",
    )
    load_world_timeout_s: float = param(60.0, "client timeout while the server loads a different town (s)")
    tick_timeout_s: float = param(10.0, "how long world.tick() waits for the server to compute a frame (s)")
    allow_version_mismatch: bool = param(
        False, "warn instead of failing when the server's X.Y.Z version differs from the carla wheel's"
    )
    town: str = param("Town01", "map loaded with load_world_if_different(town, reset_settings=False)")
    fixed_delta_seconds: float = param(0.05, "simulated seconds per tick (synchronous mode)")
    restore_settings: str = choice(
        "original",
        ("original", "asynchronous"),
        "what close() applies: the settings found at connect, or those with synchronous mode off and a "
        "variable step (use when a crashed client left the server synchronous: it would stay frozen)",
    )
    tm_port: int = param(8000, "Traffic Manager port (one per server when several run on one host)")
    tm_leading_distance_m: float = param(2.5, "Traffic Manager global distance to the leading vehicle (m)")
    tm_hybrid_physics: bool = param(False, "Traffic Manager hybrid physics mode (cheaper NPCs far from the ego)")
    ego_blueprint: str = param("vehicle.tesla.model3", "blueprint id of the ego vehicle")
    ego_role_name: str = param("hero", "role_name attribute of the ego (CARLA tools look for 'hero')")
    spawn_lift_m: float = param(0.5, "height above the spawn pose of the first ego spawn attempt (m)")
    spawn_retries: int = param(
        4, "extra ego spawn attempts after the first (each one tick later and spawn_lift_m higher)"
    )
    npc_filter: str = param("vehicle.*", "blueprint wildcard for NPC vehicles")
    npc_four_wheels_only: bool = param(True, "keep only blueprints with number_of_wheels == 4 (no bikes)")
    npc_min_distance_m: float = param(15.0, "NPCs spawn only at map spawn points at least this far from the ego")
    camera_kind: str = choice(
        "front", CAMERA_KINDS, "camera in the Snapshot: front RGB camera, or 'birdeye' (not on this backend yet)"
    )
    camera_width: int = param(256, "front camera image width (pixels)")
    camera_height: int = param(144, "front camera image height (pixels)")
    camera_fov: float = param(90.0, "front camera horizontal field of view (degrees)")
    camera_mount: tuple[float, float, float] = param(
        (1.6, 0.0, 1.5), "camera position relative to the ego (x forward, y right, z up; m)"
    )
    camera_pitch: float = param(0.0, "camera pitch (degrees, negative looks down)")
    output_width: int = param(84, "width of the grayscale camera frame in the Snapshot (pixels)")
    output_height: int = param(84, "height of the grayscale camera frame in the Snapshot (pixels)")
    sensor_timeout_s: float = param(2.0, "how long to wait for a sensor frame matching the tick (s)")
    reconnect_retries: int = param(3, "reconnect attempts after a server timeout before giving up")
    reconnect_backoff_s: float = param(2.0, "wait before reconnect attempt k is k * reconnect_backoff_s (s)")
    server_command: str | None = param(
        None,
        "command (split like a shell would, no shell features) that starts a CARLA server answering on host:port, "
        "e.g. '/opt/carla/CarlaUE4.sh -RenderOffScreen -carla-rpc-port=2000'; with it the session starts the "
        "server when none answers, restarts it when it dies or stops answering, and stops it on close; null: "
        "never start one",
    )
    server_start_timeout_s: float = param(120.0, "how long a server started by server_command may take to answer (s)")
    restart_every_episodes: int = param(
        0, "restart the server started by server_command every this many episodes (the usual workaround for "
        "CARLA's memory leaks in long runs); 0: never"
    )
    max_consecutive_failures: int = param(
        5, "training saves a checkpoint and stops after this many CARLA failures in a row (lost episodes, "
        "failed resets or evaluations); each failure ends its episode cleanly and training goes on"
    )

    def __post_init__(self) -> None:
        check(bool(self.host), "carla.host", self.host, "a non-empty host name")
        for key in ("port", "tm_port"):
            v = getattr(self, key)
            check(1 <= v <= 65535, f"carla.{key}", v, "a TCP port in [1, 65535]")
        check(self.port + 1 <= 65535, "carla.port", self.port, "<= 65534 (CARLA also uses port+1)")
        check(self.tm_port not in (self.port, self.port + 1), "carla.tm_port", self.tm_port,
              f"different from the RPC port {self.port} and the streaming port {self.port + 1}")
        for key in ("timeout_s", "load_world_timeout_s", "tick_timeout_s", "sensor_timeout_s"):
            v = getattr(self, key)
            check(math.isfinite(v) and v > 0, f"carla.{key}", v, "> 0")
        check(0.0 < self.fixed_delta_seconds <= 0.1, "carla.fixed_delta_seconds", self.fixed_delta_seconds,
              "in (0, 0.1] (CARLA's physics substepping is limited to 0.1 s per frame by default)")
        check(self.spawn_retries >= 0, "carla.spawn_retries", self.spawn_retries, ">= 0")
        check(self.reconnect_retries >= 0, "carla.reconnect_retries", self.reconnect_retries, ">= 0")
        check(self.reconnect_backoff_s >= 0, "carla.reconnect_backoff_s", self.reconnect_backoff_s, ">= 0")
        check(self.server_command is None or bool(self.server_command.strip()), "carla.server_command",
              self.server_command, "a command or null")
        check(math.isfinite(self.server_start_timeout_s) and self.server_start_timeout_s > 0,
              "carla.server_start_timeout_s", self.server_start_timeout_s, "> 0")
        check(self.restart_every_episodes >= 0, "carla.restart_every_episodes", self.restart_every_episodes, ">= 0")
        check(self.restart_every_episodes == 0 or self.server_command is not None, "carla.restart_every_episodes",
              self.restart_every_episodes, "0 unless carla.server_command is set (only a server the run started "
              "can be restarted)")
        check(self.max_consecutive_failures >= 1, "carla.max_consecutive_failures", self.max_consecutive_failures,
              ">= 1")
        check(self.spawn_lift_m >= 0, "carla.spawn_lift_m", self.spawn_lift_m, ">= 0")
        check(self.npc_min_distance_m >= 0, "carla.npc_min_distance_m", self.npc_min_distance_m, ">= 0")
        check(self.tm_leading_distance_m >= 0, "carla.tm_leading_distance_m", self.tm_leading_distance_m, ">= 0")
        for key in ("camera_width", "camera_height", "output_width", "output_height"):
            v = getattr(self, key)
            check(v > 0, f"carla.{key}", v, "> 0")
        check(0.0 < self.camera_fov < 180.0, "carla.camera_fov", self.camera_fov, "in (0, 180)")
        check(all(math.isfinite(v) for v in self.camera_mount), "carla.camera_mount", self.camera_mount,
              "three finite numbers")
        check(bool(self.ego_blueprint.startswith("vehicle.")), "carla.ego_blueprint", self.ego_blueprint,
              "a vehicle blueprint id such as 'vehicle.tesla.model3'")


# ----------------------------------------------------------------------------------------------------------
# Errors


class CarlaError(RuntimeError):
    """Base class of every error this module raises about the server."""


class CarlaUnavailableError(CarlaError):
    """No CARLA server answers at host:port (within the client timeout), or reconnecting failed."""


class CarlaVersionError(CarlaError):
    """The server's CARLA version differs from the carla client wheel's."""


class CarlaSpawnError(CarlaError):
    """The ego could not be spawned within the allowed attempts."""


class CarlaSensorTimeout(CarlaError):
    """A sensor did not deliver the frame of the current tick in time."""


class CarlaEpisodeLost(CarlaError):
    """The server timed out during ``step``; the session reconnected but the episode is gone: call ``reset``."""


def unavailable_message(host: str, port: int, timeout_s: float, reason: str) -> str:
    """What to tell a user when nothing usable answers at ``host:port``."""
    return (
        f"no CARLA server reachable at {host}:{port} ({reason}; client timeout {timeout_s:g} s).\n"
        f"Start CARLA 0.9.16 on that machine, e.g.\n"
        f"    ./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}\n"
        f"(it also listens on port {port + 1} for sensor streams), and wait until it accepts connections;\n"
        f"or run on the embedded simulator instead: --env sim"
    )


_TIMEOUT_PATTERN = re.compile(r"time-?out", re.IGNORECASE)


def is_timeout(error: BaseException) -> bool:
    """True for the carla client's network timeout (``RuntimeError('time-out of 5000ms while waiting ...')``)."""
    return (
        isinstance(error, RuntimeError)
        and not isinstance(error, CarlaError)
        and bool(_TIMEOUT_PATTERN.search(str(error)))
    )


# ----------------------------------------------------------------------------------------------------------
# Pure helpers (no server)


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


def bgra_to_gray(raw: Any, width: int, height: int, out_width: int, out_height: int) -> np.ndarray:
    """A CARLA camera buffer (BGRA, uint8, row-major ``height x width``) -> uint8 ``(out_height, out_width)``.

    BGRA -> gray with OpenCV's luma weights, then ``cv2.resize(..., INTER_AREA)`` (pixel-area averaging, the
    right filter for downscaling).
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size != width * height * 4:
        raise ValueError(f"camera buffer has {buf.size} bytes, expected {width}x{height}x4 = {width * height * 4}")
    gray = cv2.cvtColor(buf.reshape(height, width, 4), cv2.COLOR_BGRA2GRAY)
    if (width, height) == (out_width, out_height):
        return gray.copy()
    return cv2.resize(gray, (out_width, out_height), interpolation=cv2.INTER_AREA)


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


# ----------------------------------------------------------------------------------------------------------
# The port probe (raw socket, no carla client)

_RPC_VERSION_REQUEST = bytes(
    [0x94, 0x00, 0x01, 0xA7, *b"version", 0x91, 0x91, 0xC2]
)  # msgpack [0 (request), 1 (msgid), "version", [[false]]]: CARLA's sync Metadata is the first argument
_RPC_RESPONSE_HEADER = bytes([0x94, 0x01, 0x01])  # msgpack [1 (response), 1 (msgid), ...


def probe_carla_rpc(host: str, port: int, timeout_s: float) -> None:
    """Check that an rpclib (msgpack-rpc) server, as CARLA runs, answers at ``host:port``.

    Sends the request the carla client sends for ``get_server_version`` over a plain socket and checks the
    reply is a msgpack-rpc response to it. Raises :class:`CarlaUnavailableError` when nothing answers (refused,
    unreachable, or no reply within ``timeout_s``) and :class:`CarlaError` when some other program answers.
    Never lets the carla client near a foreign protocol (that aborts the whole process).
    """
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as e:
        raise CarlaUnavailableError(unavailable_message(host, port, timeout_s, f"connect: {e}")) from e
    reply = b""
    try:
        sock.sendall(_RPC_VERSION_REQUEST)
        while len(reply) < len(_RPC_RESPONSE_HEADER):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout
            sock.settimeout(remaining)
            chunk = sock.recv(64)
            if not chunk:
                break
            reply += chunk
    except (socket.timeout, TimeoutError) as e:
        raise CarlaUnavailableError(
            unavailable_message(host, port, timeout_s, "a program accepts connections but did not answer")
        ) from e
    except OSError as e:
        raise CarlaUnavailableError(unavailable_message(host, port, timeout_s, f"probe: {e}")) from e
    finally:
        sock.close()
    if not reply.startswith(_RPC_RESPONSE_HEADER):
        raise CarlaError(
            f"the program at {host}:{port} is not a CARLA server (it answered {reply[:16]!r} to a msgpack-rpc "
            f"'version' call); refusing to connect the carla client, which would abort this process. "
            f"Check carla.port (-carla-rpc-port of the server), or use --env sim"
        )


# ----------------------------------------------------------------------------------------------------------
# Sensor queues (filled on CARLA's threads, read on ours)


class FrameQueue:
    """One item per frame (a camera, the world snapshot), matched to the tick's frame number.

    ``put`` runs on the carla callback thread. ``get(frame)`` returns the item of exactly that frame: older
    items (late, or duplicates of a frame already taken) are dropped and counted in ``stats['stale']``, newer
    ones are kept for their own tick (``stats['early']``); a repeated newer frame counts as ``'duplicate'``.
    """

    def __init__(self, name: str, frame_of: Callable[[Any], int] = lambda item: int(item.frame)):
        self.name = name
        self._frame_of = frame_of
        self._queue: queue.Queue = queue.Queue()
        self._ahead: dict[int, Any] = {}
        self.stats = {"stale": 0, "early": 0, "duplicate": 0}

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def get(self, frame: int, timeout_s: float) -> Any:
        if frame in self._ahead:
            item = self._ahead.pop(frame)
            self._drop_older(frame)
            return item
        deadline = time.monotonic() + timeout_s
        seen: list[int] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(remaining, 0.0)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                raise CarlaSensorTimeout(
                    f"{self.name}: no data for frame {frame} within {timeout_s:g} s (carla.sensor_timeout_s); "
                    f"frames received meanwhile: {seen[-10:]}"
                ) from None
            f = self._frame_of(item)
            seen.append(f)
            if f == frame:
                self._drop_older(frame)
                return item
            if f < frame:
                self.stats["stale"] += 1
            elif f in self._ahead:
                self.stats["duplicate"] += 1
            else:
                self.stats["early"] += 1
                self._ahead[f] = item

    def _drop_older(self, frame: int) -> None:
        for f in [f for f in self._ahead if f < frame]:
            del self._ahead[f]
            self.stats["stale"] += 1


class EventQueue:
    """Event sensors (collision, lane invasion): any number of items per frame, most frames none.

    ``take(frame)`` returns every item with ``item.frame <= frame`` received so far, oldest frame first;
    items of later frames wait for their own tick. Nothing is waited for: an event that arrives after its
    tick was collected comes out with the next ``take``.
    """

    def __init__(self, name: str, frame_of: Callable[[Any], int] = lambda item: int(item.frame)):
        self.name = name
        self._frame_of = frame_of
        self._queue: queue.Queue = queue.Queue()
        self._ahead: list[tuple[int, Any]] = []

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def take(self, frame: int) -> list[Any]:
        pending = self._ahead
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            pending.append((self._frame_of(item), item))
        ready = sorted((p for p in pending if p[0] <= frame), key=lambda p: p[0])  # stable: arrival order
        self._ahead = [p for p in pending if p[0] > frame]
        return [item for _, item in ready]


# ----------------------------------------------------------------------------------------------------------
# Conversions carla -> NumPy (inside this module only)


def _vec(v: Any) -> np.ndarray:
    return np.array([v.x, v.y, v.z], dtype=np.float64)


def _collision(event: Any) -> CollisionEvent:
    other = event.other_actor
    other_type = str(other.type_id) if other is not None else "static.unknown"
    other_id = -1 if other is None or other_type.startswith("static.") else int(other.id)
    return CollisionEvent(
        frame=int(event.frame),
        other_id=other_id,
        other_type=other_type,
        intensity=float(np.linalg.norm(_vec(event.normal_impulse))),
    )


def _lane_invasion(event: Any) -> LaneInvasionEvent:
    names = tuple(str(getattr(m.type, "name", m.type)) for m in event.crossed_lane_markings)
    return LaneInvasionEvent(frame=int(event.frame), crossed_markings=names)


class ServerProcess:
    """A CARLA server started with ``carla.server_command``, in its own process group.

    :meth:`start` runs the command and waits until ``host:port`` answers CARLA's RPC probe (at most
    ``start_timeout_s``); :meth:`stop` sends SIGTERM to the process group, then SIGKILL after 15 s.
    """

    def __init__(self, command: str, host: str, port: int, start_timeout_s: float):
        self.command, self.host, self.port, self.start_timeout_s = command, host, port, start_timeout_s
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = shlex.split(self.command)
        try:
            self._proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise CarlaUnavailableError(f"carla.server_command {self.command!r} could not start: {e}") from e
        deadline = time.monotonic() + self.start_timeout_s
        last: BaseException | None = None
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise CarlaUnavailableError(
                    f"carla.server_command {self.command!r} exited with code {code} before a server answered on "
                    f"{self.host}:{self.port}"
                )
            try:
                probe_carla_rpc(self.host, self.port, 1.0)
                log.info("started a CARLA server (pid %d): %s", self._proc.pid, self.command)
                return
            except CarlaError as e:
                last = e
                time.sleep(0.5)
        self.stop()
        raise CarlaUnavailableError(
            f"carla.server_command {self.command!r}: no CARLA server answered on {self.host}:{self.port} within "
            f"carla.server_start_timeout_s = {self.start_timeout_s:g} s (last: {last})"
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclasses.dataclass
class _Episode:
    """What one episode created on the server (carla handles live only here)."""

    world_id: int
    ego: Any = None
    sensors: list[Any] = dataclasses.field(default_factory=list)
    vehicle_ids: list[int] = dataclasses.field(default_factory=list)  # ego + NPCs, destroyed in one batch
    on_tick_id: int | None = None
    statics: dict[int, tuple[str, np.ndarray]] = dataclasses.field(default_factory=dict)  # id -> (type, extent)
    world_queue: FrameQueue = dataclasses.field(default_factory=lambda: FrameQueue("world snapshot"))
    camera_queue: FrameQueue = dataclasses.field(default_factory=lambda: FrameQueue("camera"))
    collision_queue: EventQueue = dataclasses.field(default_factory=lambda: EventQueue("collision"))
    lane_queue: EventQueue = dataclasses.field(default_factory=lambda: EventQueue("lane invasion"))


# Sessions still open at interpreter exit are closed then (a synchronous-mode client that vanishes without
# restoring the settings leaves the server frozen). Strong references on purpose: a session dropped without
# close() must still be cleaned up at exit, not silently garbage-collected with the server left synchronous.
_LIVE_SESSIONS: set[CarlaSession] = set()


@atexit.register
def _close_live_sessions() -> None:
    for session in list(_LIVE_SESSIONS):
        try:
            session.close()
        except Exception:  # noqa: BLE001 (interpreter exit: report and go on with the others)
            log.exception("closing a CARLA session at interpreter exit failed")


# ----------------------------------------------------------------------------------------------------------
# The session


class CarlaSession:
    """A :class:`jtd3.backends.base.Backend` on a CARLA 0.9.16 server (connects in the constructor).

    ``carla_module`` replaces the ``carla`` wheel (tests pass a fake); leave it ``None`` otherwise.
    Use as a context manager or call :meth:`close`; sessions still open at interpreter exit are closed then.
    """

    def __init__(self, config: CarlaConfig | None = None, *, carla_module: Any = None):
        self.config = config if config is not None else CarlaConfig()
        if not isinstance(self.config, CarlaConfig):
            raise TypeError(f"config must be a CarlaConfig, got {type(self.config).__name__}")
        cfg = self.config
        if cfg.camera_kind != "front":
            raise ValueError(
                f"camera_kind = {cfg.camera_kind!r} is not supported on the CARLA backend yet (valid here: "
                f"'front'); the bird's-eye camera is rendered by the embedded simulator: use --env sim"
            )
        self._carla = carla_module if carla_module is not None else import_carla()
        self._lock = threading.RLock()
        self._client: Any = None
        self._world: Any = None
        self._tm: Any = None
        self._original_settings: Any = None
        self._opendrive: str | None = None
        self._spawn_transforms: list[Any] = []
        self._spawn_xy = np.zeros((0, 2))
        self._episode: _Episode | None = None
        self._orphans: tuple[int, list[int]] | None = None  # (world id, actor ids) a timeout kept us from destroying
        self._closed = False
        self.cleanup_problems: list[str] = []  # what the last teardown could not do (also logged)
        self.npc_spawn_failures: list[str] = []  # server errors of the last reset's NPC batch (also logged)
        self.sensor_stats: dict[str, dict[str, int]] = {}  # stale/early/duplicate counts of the last episode
        self._server: ServerProcess | None = None  # the server this session started (carla.server_command)
        self._server_spec = (cfg.server_command, cfg.server_start_timeout_s)  # what to start, if anything
        self._resets_since_start = 0
        self._warned_not_ours = False
        self.server_starts = 0  # servers this session started (first start and restarts)
        _LIVE_SESSIONS.add(self)
        try:
            self._connect_or_start()
        except BaseException:
            self.close()  # a half-done connect may already have switched the server to synchronous mode
            raise

    # -- Backend protocol ------------------------------------------------------------------------------

    @property
    def opendrive(self) -> str:
        """The loaded town's OpenDRIVE text (``world.get_map().to_opendrive()``, read once per connection)."""
        if self._opendrive is None:
            raise CarlaError("not connected to a CARLA server")
        return self._opendrive

    def reset(self, spawn: Pose, num_vehicles: int, seed: int) -> Snapshot:
        """Destroy the previous episode, spawn the ego at ``spawn`` and ``num_vehicles`` NPCs; one tick.

        ``seed`` (>= 0) seeds the Traffic Manager and the choice of NPC blueprints and spawn points.
        On a server timeout the session reconnects (at most ``reconnect_retries`` times) and starts over.
        """
        if not isinstance(spawn, Pose):
            raise TypeError(f"spawn must be a jtd3.backends.base.Pose, got {type(spawn).__name__}")
        if not all(math.isfinite(v) for v in (spawn.x, spawn.y, spawn.z, spawn.yaw)):
            raise ValueError(f"spawn pose must be finite, got {spawn}")
        if isinstance(num_vehicles, bool) or not isinstance(num_vehicles, (int, np.integer)) or num_vehicles < 0:
            raise ValueError(f"num_vehicles must be an integer >= 0, got {num_vehicles!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        cfg = self.config
        with self._lock:
            self._check_open()
            self._maybe_scheduled_restart()
            self._resets_since_start += 1
            failures = 0
            while True:
                try:
                    if self._world is None:  # a reconnect after an earlier timeout failed
                        self._connect_or_start()
                    return self._reset_once(spawn, int(num_vehicles), int(seed))
                except BaseException as e:
                    self._teardown_episode()
                    if not (is_timeout(e) or isinstance(e, CarlaUnavailableError)):
                        raise
                    self._drop_connection()
                    failures += 1
                    if failures > cfg.reconnect_retries:
                        raise CarlaUnavailableError(
                            f"reset failed {failures} time(s) on server timeouts (carla.reconnect_retries = "
                            f"{cfg.reconnect_retries}); last error: {e}\n"
                            + unavailable_message(cfg.host, cfg.port, cfg.timeout_s, "timed out")
                        ) from e
                    log.warning("CARLA timed out during reset (%s); reconnecting (%d/%d)", e, failures,
                                cfg.reconnect_retries)
                    time.sleep(cfg.reconnect_backoff_s * failures)

    def step(self, control: VehicleControl) -> Snapshot:
        """Apply ``control`` to the ego and advance one fixed step (``fixed_delta_seconds``).

        Raises :class:`CarlaSensorTimeout` when a sensor frame is missing and :class:`CarlaEpisodeLost` when
        the server timed out (after reconnecting); either way the episode was torn down: call :meth:`reset`.
        """
        if not isinstance(control, VehicleControl):
            raise TypeError(f"control must be a jtd3.backends.base.VehicleControl, got {type(control).__name__}")
        with self._lock:
            self._check_open()
            ep = self._episode
            if ep is None:
                raise RuntimeError("CarlaSession.step() before reset() (or after an error ended the episode)")
            try:
                ep.ego.apply_control(to_carla_control(self._carla, control))
                return self._tick_and_collect(ep)
            except BaseException as e:
                self._teardown_episode()
                if not is_timeout(e):
                    raise
                log.warning("CARLA timed out during step (%s); reconnecting", e)
                self._reconnect(e)
                raise CarlaEpisodeLost(
                    f"the CARLA server at {self.config.host}:{self.config.port} timed out during step ({e}); "
                    f"reconnected, the episode is lost: call reset()"
                ) from e

    def close(self) -> None:
        """Destroy the episode's actors and restore the server's settings; safe to call twice.

        Never raises for server problems: what could not be done is logged and kept in ``cleanup_problems``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _LIVE_SESSIONS.discard(self)
            server_ok = self._teardown_episode()
            problems = self.cleanup_problems
            if self._world is not None and server_ok:
                world, tm = self._world, self._tm
                if self._original_settings is not None:
                    settings = restored_settings(self._original_settings, self.config.restore_settings)
                    self._attempt(problems, "restore the world settings", lambda: world.apply_settings(settings))
                if tm is not None:
                    self._attempt(problems, "switch Traffic Manager synchronous mode off",
                                  lambda: tm.set_synchronous_mode(False))
            elif self._world is not None:
                problems.append("skipped restoring the world settings and the Traffic Manager: the server timed out")
            if problems:
                log.warning("CARLA session %s:%d closed with problems: %s", self.config.host, self.config.port,
                            "; ".join(problems))
            self._drop_connection()
            if self._server is not None:
                self._server.stop()
                self._server = None

    def __enter__(self) -> "CarlaSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- connection ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this CarlaSession is closed")

    def _connect(self) -> None:
        """Connect, check versions, save settings, load the town, synchronous mode, Traffic Manager, one tick.

        Any server timeout on the way becomes :class:`CarlaUnavailableError`.
        """
        cfg = self.config
        try:
            self._connect_steps()
        except RuntimeError as e:
            if not is_timeout(e):
                raise
            raise CarlaUnavailableError(unavailable_message(cfg.host, cfg.port, cfg.timeout_s, str(e))) from e

    def _connect_steps(self) -> None:
        cfg, carla = self.config, self._carla
        if cfg.probe:
            probe_carla_rpc(cfg.host, cfg.port, cfg.timeout_s)
        client = carla.Client(cfg.host, cfg.port)
        client.set_timeout(cfg.timeout_s)
        server_version = client.get_server_version()
        check_versions(client.get_client_version(), server_version, cfg.allow_version_mismatch)
        self._client = client
        world = self._world = client.get_world()
        if self._original_settings is None:  # on a reconnect the server holds our settings: keep the first
            self._original_settings = world.get_settings()
            if self._original_settings.synchronous_mode:
                log.warning(
                    "the CARLA server at %s:%d is already in synchronous mode (another client drives it, or a "
                    "client died without restoring its settings); close() restores %s settings",
                    cfg.host, cfg.port, cfg.restore_settings)
        client.set_timeout(cfg.load_world_timeout_s)
        try:
            client.load_world_if_different(cfg.town, reset_settings=False)  # returns None in 0.9.16
        finally:
            client.set_timeout(cfg.timeout_s)
        world = self._world = client.get_world()
        world.apply_settings(sync_settings(world.get_settings(), cfg.fixed_delta_seconds, no_rendering=False))
        # Positional port: the stub names it client_connection, the 0.9.16 binding names it port.
        tm = self._tm = client.get_trafficmanager(cfg.tm_port)
        tm.set_synchronous_mode(True)
        tm.set_global_distance_to_leading_vehicle(cfg.tm_leading_distance_m)
        tm.set_hybrid_physics_mode(cfg.tm_hybrid_physics)
        world.tick(cfg.tick_timeout_s)
        carla_map = world.get_map()
        self._opendrive = carla_map.to_opendrive()
        self._spawn_transforms = list(carla_map.get_spawn_points())
        self._spawn_xy = np.array([[t.location.x, t.location.y] for t in self._spawn_transforms]).reshape(-1, 2)
        self._destroy_orphans()
        log.info("connected to CARLA %s at %s:%d, %s, synchronous, dt %.3f s, TM port %d", server_version,
                 cfg.host, cfg.port, cfg.town, cfg.fixed_delta_seconds, cfg.tm_port)

    def _drop_connection(self) -> None:
        self._client = self._world = self._tm = None

    def _connect_or_start(self) -> None:
        """Connect; with ``server_command``, start the server when none answers (or ours died) first."""
        if self._server is not None and not self._server.alive():
            self._restart_server("the server this run started has exited")
        try:
            self._connect()
        except CarlaUnavailableError as e:
            if self._server_spec[0] is None:
                raise
            self._drop_connection()
            self._restart_server(f"no server answered ({str(e).splitlines()[0]})")
            self._connect()

    def _restart_server(self, reason: str) -> None:
        """(Re)start the server with ``server_command``; the new server's settings are its own."""
        cfg = self.config
        command, start_timeout_s = self._server_spec
        if self._server is not None:
            log.warning("stopping the CARLA server this run started: %s", reason)
            self._server.stop()
        log.warning("starting a CARLA server (%s): %s", reason, command)
        self._drop_connection()
        self._server = ServerProcess(command, cfg.host, cfg.port, start_timeout_s)
        self.server_starts += 1
        self._original_settings = None  # a fresh server: record its own settings at the next connect
        self._orphans = None  # the old world and its actors are gone
        self._resets_since_start = 0
        self._server.start()

    def _maybe_scheduled_restart(self) -> None:
        """Restart our server every ``restart_every_episodes`` episodes (CARLA leaks memory in long runs)."""
        every = self.config.restart_every_episodes
        if not every or self._resets_since_start < every:
            return
        if self._server is None:
            if not self._warned_not_ours:
                log.warning("carla.restart_every_episodes = %d: the server at %s:%d was not started by this run; "
                            "it is not restarted", every, self.config.host, self.config.port)
                self._warned_not_ours = True
            return
        self._teardown_episode()
        self._restart_server(f"carla.restart_every_episodes = {every}")
        self._connect()

    def _reconnect(self, cause: BaseException) -> None:
        """Drop the client and connect again, at most ``reconnect_retries`` times (with ``server_command``,
        then once more after restarting the server), then give up clearly."""
        cfg = self.config
        attempts = cfg.reconnect_retries
        command = self._server_spec[0]
        self._drop_connection()
        last = cause
        for k in range(1, attempts + 1):
            if self._server is not None and not self._server.alive():
                break  # the server we started is dead: restart it below instead of waiting for it
            time.sleep(cfg.reconnect_backoff_s * k)
            try:
                self._connect()
                log.info("reconnected to CARLA at %s:%d (attempt %d)", cfg.host, cfg.port, k)
                return
            except CarlaUnavailableError as e:
                last = e
            self._drop_connection()
        if command is not None:
            try:
                self._restart_server(f"lost the server ({str(last).splitlines()[0]})")
                self._connect()
                return
            except CarlaUnavailableError as e:
                last = e
                self._drop_connection()
        raise CarlaUnavailableError(
            f"lost the CARLA server at {cfg.host}:{cfg.port} and {attempts} reconnect attempt(s) failed "
            f"(carla.reconnect_retries = {cfg.reconnect_retries}); last error: {last}\n"
            + unavailable_message(cfg.host, cfg.port, cfg.timeout_s, "reconnect failed")
        ) from last

    def _add_orphans(self, world_id: int, ids: list[int]) -> None:
        if self._orphans is not None and self._orphans[0] == world_id:
            ids = self._orphans[1] + ids
        self._orphans = (world_id, ids)

    def _destroy_orphans(self) -> None:
        """After a reconnect to the same world, destroy the actors a timeout kept us from destroying."""
        if self._orphans is None:
            return
        world_id, ids = self._orphans
        self._orphans = None
        if int(self._world.id) != world_id:
            log.warning("CARLA world changed (%d -> %d); not destroying %d old actor ids", world_id, self._world.id,
                        len(ids))
            return
        self._client.apply_batch_sync(destroy_commands(self._carla, ids), False)
        self._world.tick(self.config.tick_timeout_s)

    # -- episode ---------------------------------------------------------------------------------------

    def _reset_once(self, spawn: Pose, num_vehicles: int, seed: int) -> Snapshot:
        cfg, world = self.config, self._world
        self._teardown_episode(raise_on_timeout=True)
        rng = np.random.default_rng(seed)
        self._tm.set_random_device_seed(seed)
        ep = _Episode(world_id=int(world.id))
        self._episode = ep
        ep.on_tick_id = world.on_tick(ep.world_queue.put)
        library = world.get_blueprint_library()

        ep.ego = self._spawn_ego(library, spawn)
        ep.vehicle_ids.append(int(ep.ego.id))
        world.tick(cfg.tick_timeout_s)  # the ego's pose reads as the origin until the server has ticked

        ep.vehicle_ids.extend(self._spawn_npcs(library, spawn, num_vehicles, rng))
        self._attach_sensors(library, ep)
        frame = int(world.tick(cfg.tick_timeout_s))
        # Every vehicle in the world (ours and any other client's): type and bounding box do not change.
        ep.statics = {
            int(a.id): (str(a.type_id), _vec(a.bounding_box.extent)) for a in world.get_actors().filter("vehicle.*")
        }
        if int(ep.ego.id) not in ep.statics:
            raise CarlaError(f"the ego (id {ep.ego.id}) is not among the world's vehicles after spawning")
        return self._collect(ep, frame)

    def _spawn_ego(self, library: Any, spawn: Pose) -> Any:
        cfg, carla, world = self.config, self._carla, self._world
        try:
            bp = library.find(cfg.ego_blueprint)
        except (IndexError, RuntimeError, KeyError) as e:
            raise ValueError(
                f"carla.ego_blueprint = {cfg.ego_blueprint!r} is not a blueprint on this server; vehicles: "
                f"{', '.join(sorted(b.id for b in library.filter('vehicle.*')))}"
            ) from e
        if bp.has_attribute("role_name"):
            bp.set_attribute("role_name", cfg.ego_role_name)
        attempts = 1 + cfg.spawn_retries
        for k in range(attempts):
            z = spawn.z + cfg.spawn_lift_m * (k + 1)
            transform = carla.Transform(carla.Location(x=spawn.x, y=spawn.y, z=z), carla.Rotation(yaw=spawn.yaw))
            actor = world.try_spawn_actor(bp, transform)
            if actor is not None:
                if k:
                    log.info("ego spawned at attempt %d/%d", k + 1, attempts)
                return actor
            world.tick(cfg.tick_timeout_s)  # let destroyed actors leave before the next attempt
        raise CarlaSpawnError(
            f"could not spawn {cfg.ego_blueprint} at (x={spawn.x:.2f}, y={spawn.y:.2f}, yaw={spawn.yaw:.1f}) in "
            f"{attempts} attempts (carla.spawn_retries = {cfg.spawn_retries}): the place is occupied (an actor "
            f"left by a crashed client?) or not on a road"
        )

    def _spawn_npcs(self, library: Any, spawn: Pose, count: int, rng: np.random.Generator) -> list[int]:
        cfg, carla = self.config, self._carla
        self.npc_spawn_failures = []
        if count == 0:
            return []
        chosen = choose_npc_spawns(self._spawn_xy, (spawn.x, spawn.y), count, cfg.npc_min_distance_m, rng)
        blueprints = sorted(library.filter(cfg.npc_filter), key=lambda b: b.id)
        if cfg.npc_four_wheels_only:
            blueprints = [
                b for b in blueprints
                if b.has_attribute("number_of_wheels") and b.get_attribute("number_of_wheels").as_int() == 4
            ]
        if not blueprints:
            raise ValueError(
                f"carla.npc_filter = {cfg.npc_filter!r} (npc_four_wheels_only = {cfg.npc_four_wheels_only}) "
                f"matches no blueprint on this server"
            )
        picked = []
        for index in chosen:
            bp = blueprints[int(rng.integers(len(blueprints)))]
            if bp.has_attribute("color"):
                colors = list(bp.get_attribute("color").recommended_values)
                if colors:
                    bp.set_attribute("color", colors[int(rng.integers(len(colors)))])
            if bp.has_attribute("role_name"):
                bp.set_attribute("role_name", "autopilot")
            # SpawnActor copies the blueprint's attributes when it is built: build it before the next pick
            # may change the same blueprint object again.
            picked.append(npc_spawn_commands(carla, [bp], [self._spawn_transforms[int(index)]], cfg.tm_port)[0])
        responses = self._client.apply_batch_sync(picked, False)
        ids = []
        for r in responses:
            if r.has_error():
                self.npc_spawn_failures.append(str(r.error))
            else:
                ids.append(int(r.actor_id))
        if self.npc_spawn_failures:
            log.warning("%d of %d NPC spawns failed: %s", len(self.npc_spawn_failures), count,
                        "; ".join(sorted(set(self.npc_spawn_failures))))
        return ids

    def _attach_sensors(self, library: Any, ep: _Episode) -> None:
        cfg, carla, world = self.config, self._carla, self._world
        cam_bp = library.find("sensor.camera.rgb")
        cam_bp.set_attribute("image_size_x", str(cfg.camera_width))
        cam_bp.set_attribute("image_size_y", str(cfg.camera_height))
        cam_bp.set_attribute("fov", str(cfg.camera_fov))
        cam_bp.set_attribute("sensor_tick", "0.0")  # a frame every tick
        mx, my, mz = cfg.camera_mount
        mount = carla.Transform(carla.Location(x=mx, y=my, z=mz), carla.Rotation(pitch=cfg.camera_pitch))
        for bp, transform, sink in (
            (cam_bp, mount, ep.camera_queue.put),
            (library.find("sensor.other.collision"), carla.Transform(), ep.collision_queue.put),
            (library.find("sensor.other.lane_invasion"), carla.Transform(), ep.lane_queue.put),
        ):
            sensor = world.spawn_actor(bp, transform, attach_to=ep.ego)
            ep.sensors.append(sensor)
            sensor.listen(sink)  # the callback only enqueues: it holds no reference to the session

    def _tick_and_collect(self, ep: _Episode) -> Snapshot:
        return self._collect(ep, int(self._world.tick(self.config.tick_timeout_s)))

    def _collect(self, ep: _Episode, frame: int) -> Snapshot:
        """The Snapshot of ``frame``: every sensor's data matched on that frame number."""
        cfg = self.config
        ws = ep.world_queue.get(frame, cfg.sensor_timeout_s)
        image = ep.camera_queue.get(frame, cfg.sensor_timeout_s)
        if (image.width, image.height) != (cfg.camera_width, cfg.camera_height):
            raise CarlaError(
                f"camera delivered {image.width}x{image.height}, configured {cfg.camera_width}x{cfg.camera_height}"
            )
        camera = bgra_to_gray(image.raw_data, image.width, image.height, cfg.output_width, cfg.output_height)
        collisions = tuple(_collision(e) for e in ep.collision_queue.take(frame))
        lanes = tuple(_lane_invasion(e) for e in ep.lane_queue.take(frame))
        self.sensor_stats = {q.name: dict(q.stats) for q in (ep.world_queue, ep.camera_queue)}

        ego_id = int(ep.ego.id)
        if not ws.has_actor(ego_id):
            raise CarlaError(f"the ego (id {ego_id}) is missing from the world snapshot of frame {frame}")
        ego = self._actor_state(ws.find(ego_id), *ep.statics[ego_id])
        ids, transforms, velocities = [], [], []
        for i in sorted(ep.statics):
            if i != ego_id and ws.has_actor(i):  # vehicles destroyed since reset drop out
                snap = ws.find(i)
                ids.append(i)
                transforms.append(snap.get_transform())
                velocities.append(_vec(snap.get_velocity()))
        if ids:
            vehicles = Vehicles(
                ids=np.array(ids, dtype=np.int64),
                location=np.array([_vec(t.location) for t in transforms]),
                yaw=np.array([float(t.rotation.yaw) for t in transforms]),
                velocity=np.array(velocities),
                extent=np.array([ep.statics[i][1] for i in ids]),
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
        )

    @staticmethod
    def _actor_state(snap: Any, type_id: str, extent: np.ndarray) -> ActorState:
        tf = snap.get_transform()
        return ActorState(
            id=int(snap.id),
            type_id=type_id,
            location=_vec(tf.location),
            rotation=np.array([tf.rotation.pitch, tf.rotation.yaw, tf.rotation.roll], dtype=np.float64),
            velocity=_vec(snap.get_velocity()),
            acceleration=_vec(snap.get_acceleration()),
            angular_velocity=_vec(snap.get_angular_velocity()),
            extent=extent.copy(),
        )

    # -- teardown --------------------------------------------------------------------------------------

    @staticmethod
    def _attempt(problems: list[str], what: str, fn: Callable[[], Any]) -> str:
        """Run one cleanup call; record (never raise) a failure. Returns "ok", "failed" or "timeout"."""
        try:
            fn()
            return "ok"
        except Exception as e:  # noqa: BLE001 (cleanup goes on; the problems are reported)
            timeout = is_timeout(e)
            problems.append(f"could not {what}: {'timed out: ' if timeout else ''}{e}")
            return "timeout" if timeout else "failed"

    def _teardown_episode(self, raise_on_timeout: bool = False) -> bool:
        """Stop the sensors, destroy them, destroy the vehicles in one batch, tick.

        Returns False when the server timed out. After the first timeout no further server call is made
        (each would wait the full client timeout); the actors left behind are destroyed after a reconnect to
        the same world (see ``_destroy_orphans``). Problems go to ``cleanup_problems`` and the log.
        """
        ep, self._episode = self._episode, None
        problems: list[str] = []
        self.cleanup_problems = problems
        if ep is None:
            return True
        self.sensor_stats = {q.name: dict(q.stats) for q in (ep.world_queue, ep.camera_queue)}
        sensor_ids = [int(s.id) for s in ep.sensors]
        if self._world is None:  # connection already dropped: destroy them after the reconnect
            self._add_orphans(ep.world_id, sensor_ids + ep.vehicle_ids)
            return False
        world, client, carla, cfg = self._world, self._client, self._carla, self.config
        ok = True

        def run(what: str, fn: Callable[[], Any]) -> bool:
            nonlocal ok
            if not ok:
                return False
            status = self._attempt(problems, what, fn)
            ok = status != "timeout"
            return status == "ok"

        if ep.on_tick_id is not None:
            run("remove the on_tick callback", lambda: world.remove_on_tick(ep.on_tick_id))
        for s in ep.sensors:  # stop every sensor before destroying any: never destroy a listening sensor
            run(f"stop sensor {s.id}", lambda s=s: s.stop() if s.is_listening() else None)

        def destroy_sensor(sensor: Any) -> None:
            if sensor.is_listening():  # its stop() failed: destroying it now can crash the server
                raise CarlaError(f"sensor {sensor.id} is still listening; left for after a reconnect")
            sensor.destroy()

        left = [
            i for s, i in zip(ep.sensors, sensor_ids) if not run(f"destroy sensor {i}", lambda s=s: destroy_sensor(s))
        ]
        vehicles = list(ep.vehicle_ids)
        if left and ep.ego is not None:  # keep the ego while one of its sensors is still there
            vehicles = [i for i in vehicles if i != int(ep.ego.id)]
            left.append(int(ep.ego.id))

        def destroy_vehicles() -> None:
            for r in client.apply_batch_sync(destroy_commands(carla, vehicles), False):
                if r.has_error():
                    problems.append(f"destroying vehicle {r.actor_id}: {r.error}")

        if vehicles and not run(f"destroy {len(vehicles)} vehicles", destroy_vehicles):
            left += vehicles
        run("tick after destroying the actors", lambda: world.tick(cfg.tick_timeout_s))
        if left:
            self._add_orphans(ep.world_id, left)
        if problems:
            log.warning("CARLA episode teardown: %s", "; ".join(problems))
        if raise_on_timeout and not ok:
            raise RuntimeError(f"time-out while tearing down the previous episode: {'; '.join(problems)}")
        return ok
