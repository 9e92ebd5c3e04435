"""Settings of one CARLA session (YAML section ``env.carla``), kept apart from the session so that the env config
imports a dataclass, not the session."""

from __future__ import annotations

import dataclasses
import math

from jtd3.backends.obstacle import ObstacleSensorConfig
from jtd3.config import ConfigNode, check, choice, nested, param

__all__ = ["CAMERA_KINDS", "CarlaConfig"]

CAMERA_KINDS = ("front", "birdeye")

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
    tick_watchdog_s: float = param(
        25.0, "a world.tick() still running after this long is stuck in carla 0.9.16's Traffic Manager (a "
        "lost-notification deadlock): the session switches the TM's synchronous mode off and on to wake it "
        "(logged; counted in stuck_ticks); >= 2 * tick_timeout_s, 0: off",
    )
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
    tm_shut_down_on_close: bool = param(
        True, "close() shuts the Traffic Manager down (its thread in this process stops; the next session starts "
        "a fresh one); set false when other clients share tm_port and still use its Traffic Manager",
    )
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
    obstacle: ObstacleSensorConfig = nested(ObstacleSensorConfig)
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
        check(self.tick_watchdog_s == 0 or self.tick_watchdog_s >= 2 * self.tick_timeout_s, "carla.tick_watchdog_s",
              self.tick_watchdog_s, f"0 (off) or >= 2 * tick_timeout_s = {2 * self.tick_timeout_s:g} (before "
              "that the tick may still be waiting for the server, not stuck)")
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
