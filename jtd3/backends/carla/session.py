"""The CARLA 0.9.16 backend: the session, the only code in jtd3 that talks to a CARLA server.

:class:`CarlaSession` implements :class:`jtd3.backends.base.Backend` on a real server. It keeps the server in
synchronous mode (fixed step ``fixed_delta_seconds``, 0.05 s by default), drives one ego vehicle with a
front RGB camera, a collision sensor, a lane-invasion sensor and a front obstacle sensor, spawns NPC vehicles under a seeded Traffic
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
is reported with the next tick (its ``frame`` field tells which tick produced it). The obstacle sensor fires
only while something is in range, so its absence cannot be waited for: the tick's own event, or one of the
frame before that arrived late, is the reading.

A server timeout (``RuntimeError("time-out of ...")`` from the carla client) triggers a reconnect with at most
``reconnect_retries`` attempts; after that :class:`CarlaUnavailableError` says what to do. ``reset`` retries
itself after a successful reconnect; ``step`` raises :class:`CarlaEpisodeLost` (the episode's actors are gone;
call ``reset``).

Frames and units: CARLA's (metres, seconds, degrees; x east, y south, z up, left-handed; yaw clockwise seen
from above). See ``docs/carla.md`` for the design notes and measured numbers.

Its pieces: :mod:`~jtd3.backends.carla.config` (settings), :mod:`~jtd3.backends.carla.errors`,
:mod:`~jtd3.backends.carla.probe` (the port probe), :mod:`~jtd3.backends.carla.sensors` (queues, conversions),
:mod:`~jtd3.backends.carla.client` (the carla wheel: import, versions, commands) and
:mod:`~jtd3.backends.carla.server_process` (a server the session starts), :mod:`~jtd3.backends.carla.snapshot`
(carla data of one frame -> :class:`~jtd3.backends.base.Snapshot`) and :mod:`~jtd3.backends.carla.watchdog`.
The session stays one class of about 700 lines on purpose: it owns one connection's whole lifecycle
(connect, reconnect, episodes, teardown), and every part of it reads and repairs the same connection state.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jtd3.backends.base import Pose, Snapshot, VehicleControl
from jtd3.backends.carla.client import (
    check_versions,
    choose_npc_spawns,
    destroy_commands,
    import_carla,
    npc_spawn_commands,
    restored_settings,
    sync_settings,
    to_carla_control,
)
from jtd3.backends.carla.config import CarlaConfig
from jtd3.backends.carla.errors import (
    CarlaEpisodeLost,
    CarlaError,
    CarlaSensorTimeout,
    CarlaSpawnError,
    CarlaUnavailableError,
    is_timeout,
    unavailable_message,
)
from jtd3.backends.carla.probe import call_traffic_manager, probe_carla_rpc
from jtd3.backends.carla.sensors import (
    EventQueue,
    FrameQueue,
    bgra_to_gray,
    collision_event,
    lane_invasion_event,
    vector3,
)
from jtd3.backends.carla.server_process import ServerProcess
from jtd3.backends.carla.snapshot import assemble_snapshot
from jtd3.backends.carla.watchdog import Watchdog

__all__ = ["CarlaSession"]

log = logging.getLogger(__name__)


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
    obstacle_queue: EventQueue = dataclasses.field(default_factory=lambda: EventQueue("obstacle"))


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
        self._tm_rpc_port: int | None = None
        self._original_settings: Any = None
        self._opendrive: str | None = None
        self._spawn_transforms: list[Any] = []
        self._spawn_xy = np.zeros((0, 2))
        self._episode: _Episode | None = None
        self._last_camera: np.ndarray | None = None  # the newest tick's frame (camera())
        self._orphans: tuple[int, list[int]] | None = None  # (world id, actor ids) a timeout kept us from destroying
        self._closed = False
        self.cleanup_problems: list[str] = []  # what the last teardown could not do (also logged)
        self.npc_spawn_failures: list[str] = []  # server errors of the last reset's NPC batch (also logged)
        self.sensor_stats: dict[str, dict[str, int]] = {}  # stale/early/duplicate counts of the last episode
        self._tick_watchdog = (Watchdog(self.config.tick_watchdog_s, self._unstick_traffic_manager,
                                        name=f"carla-tick-watchdog:{self.config.port}")
                               if self.config.tick_watchdog_s > 0 else None)
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

    def step(self, control: VehicleControl, camera: bool = True) -> Snapshot:
        """Apply ``control`` to the ego and advance one fixed step (``fixed_delta_seconds``). The server sends
        a camera frame every tick, so the snapshot always has one (``camera`` is accepted for the contract).

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

    def camera(self) -> np.ndarray:
        """The newest tick's camera frame."""
        if self._last_camera is None:
            raise RuntimeError("CarlaSession.camera() before reset()")
        return self._last_camera

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
                    if self.config.tm_shut_down_on_close:
                        # A Traffic Manager left running keeps a thread in this process that polls the server
                        # every frame, aborts the process when that server goes away, and carries stale
                        # step flags into the next session's synchronous ticks (where carla 0.9.16's
                        # unlocked notify can deadlock world.tick; docs/carla.md). A fresh one per session.
                        self._attempt(problems, "shut the Traffic Manager down", tm.shut_down)
            elif self._world is not None:
                problems.append("skipped restoring the world settings and the Traffic Manager: the server timed out")
            if problems:
                log.warning("CARLA session %s:%d closed with problems: %s", self.config.host, self.config.port,
                            "; ".join(problems))
            self._drop_connection()
            if self._server is not None:
                self._server.stop()
                self._server = None
            if self._tick_watchdog is not None:
                self._tick_watchdog.close()

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
        self._tm_rpc_port = int(tm.get_port())  # the port its RPC server bound (the watchdog calls it)
        tm.set_synchronous_mode(True)
        tm.set_global_distance_to_leading_vehicle(cfg.tm_leading_distance_m)
        tm.set_hybrid_physics_mode(cfg.tm_hybrid_physics)
        self._tick()
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
        self._tick()

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
        self._tick()  # the ego's pose reads as the origin until the server has ticked

        ep.vehicle_ids.extend(self._spawn_npcs(library, spawn, num_vehicles, rng))
        self._attach_sensors(library, ep)
        frame = self._tick()
        # Every vehicle in the world (ours and any other client's): type and bounding box do not change.
        ep.statics = {
            int(a.id): (str(a.type_id), vector3(a.bounding_box.extent)) for a in world.get_actors().filter("vehicle.*")
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
            self._tick()  # let destroyed actors leave before the next attempt
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
        sensors = [
            (cam_bp, mount, ep.camera_queue.put),
            (library.find("sensor.other.collision"), carla.Transform(), ep.collision_queue.put),
            (library.find("sensor.other.lane_invasion"), carla.Transform(), ep.lane_queue.put),
        ]
        if cfg.obstacle.enabled:
            ob = cfg.obstacle
            ob_bp = library.find("sensor.other.obstacle")
            for key, value in (("distance", ob.distance), ("hit_radius", ob.hit_radius), ("only_dynamics", "true"),
                               ("sensor_tick", "0.0")):
                ob_bp.set_attribute(key, str(value))
            bumper = float(ep.ego.bounding_box.extent.x)  # the ego's half length: its front bumper's x
            sensors.append((ob_bp, carla.Transform(carla.Location(x=bumper, z=ob.mount_z)), ep.obstacle_queue.put))
        for bp, transform, sink in sensors:
            sensor = world.spawn_actor(bp, transform, attach_to=ep.ego)
            ep.sensors.append(sensor)
            sensor.listen(sink)  # the callback only enqueues: it holds no reference to the session

    def _tick(self) -> int:
        """``world.tick()``, watched: a tick stuck in the Traffic Manager is woken up (see watchdog.py)."""
        world = self._world
        if self._tick_watchdog is None:
            return int(world.tick(self.config.tick_timeout_s))
        with self._tick_watchdog.watch():
            return int(world.tick(self.config.tick_timeout_s))

    def _unstick_traffic_manager(self) -> None:
        """Runs on the watchdog's thread while ``world.tick()`` hangs: off and on again wakes the TM's worker."""
        port = self._tm_rpc_port
        log.warning("world.tick() on %s:%d has not returned after %.0f s (every wait of the tick but the Traffic "
                    "Manager's has timed out by now): switching the Traffic Manager's synchronous mode off and on "
                    "to wake it (carla 0.9.16's lost-notification deadlock, carla-simulator/carla#9172)",
                    self.config.host, self.config.port, self.config.tick_watchdog_s)
        if port is not None:
            # Over the TM's own RPC server: the carla module's TrafficManager calls wait for a lock that the
            # stuck tick holds.
            call_traffic_manager(port, "set_synchronous_mode", False)
            call_traffic_manager(port, "set_synchronous_mode", True)

    @property
    def stuck_ticks(self) -> int:
        """How many times the tick watchdog has had to wake the Traffic Manager (see watchdog.py)."""
        return 0 if self._tick_watchdog is None else self._tick_watchdog.overruns

    def _tick_and_collect(self, ep: _Episode) -> Snapshot:
        return self._collect(ep, self._tick())

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
        collisions = tuple(collision_event(e) for e in ep.collision_queue.take(frame))
        lanes = tuple(lane_invasion_event(e) for e in ep.lane_queue.take(frame))
        obstacles = ep.obstacle_queue.take(frame)
        self.sensor_stats = {q.name: dict(q.stats) for q in (ep.world_queue, ep.camera_queue)}
        self._last_camera = camera
        return assemble_snapshot(frame, ws, int(ep.ego.id), ep.statics, camera, collisions, lanes, obstacles)

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
        run("tick after destroying the actors", lambda: self._tick())
        if left:
            self._add_orphans(ep.world_id, left)
        if problems:
            log.warning("CARLA episode teardown: %s", "; ".join(problems))
        if raise_on_timeout and not ok:
            raise RuntimeError(f"time-out while tearing down the previous episode: {'; '.join(problems)}")
        return ok
