"""``CarlaServer``: the embedded simulator behind CARLA 0.9.16's RPC and streaming protocols.

    with CarlaServer(port=0) as server:          # 127.0.0.1, a free RPC port, streaming on another free port
        client = carla.Client("127.0.0.1", server.port)

The RPC port answers msgpack-RPC (:mod:`jtd3.carla_server.rpc`), the streaming port serves the world state
and sensor streams (:mod:`jtd3.carla_server.streaming`). In synchronous mode the world advances only on
``tick_cue``; in asynchronous mode a background thread ticks it every ``fixed_delta_seconds`` (0.05 s when
unset) of wall-clock time, as a free-running CARLA server does.

``faults`` injects failures at the protocol level for tests: calls that are never answered, sensor frames
dropped or sent late; :meth:`kill` drops every connection as a crashing server does.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from jtd3.backends.sim.config import SimConfig
from jtd3.carla_server import layouts as L
from jtd3.carla_server import rpc
from jtd3.carla_server.actors import Actor
from jtd3.carla_server.control import CONTROL
from jtd3.carla_server.handlers import ERRORS, HANDLERS, VOID_CALLS
from jtd3.carla_server.streaming import StreamServer
from jtd3.carla_server.world import World, rehearse

__all__ = ["CarlaServer", "Faults"]

log = logging.getLogger(__name__)

TOWNS = {"Town01": "town01"}  # CARLA map name -> embedded town


@dataclasses.dataclass
class Faults:
    """Failures to inject (tests). Sensor keys are blueprint ids (``sensor.camera.rgb``) or ``world``."""

    hang: dict[str, int] = dataclasses.field(default_factory=dict)  # RPC name -> how many calls go unanswered (-1: all)
    drop_frames: dict[str, set[int]] = dataclasses.field(default_factory=dict)  # sensor -> frames not sent
    delay_s: dict[str, float] = dataclasses.field(default_factory=dict)  # sensor -> seconds each frame is late
    duplicate: set[str] = dataclasses.field(default_factory=set)  # sensors whose every frame is sent twice


class CarlaServer:
    """Serve ``town`` (a CARLA map name, or an embedded town name) on ``host:port`` (``port=0``: a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, streaming_port: int | None = None,
                 town: str = "Town01", sim: SimConfig | None = None, control: bool = False):
        embedded = TOWNS.get(town, town.lower())
        sim = sim if sim is not None else SimConfig()
        self.sim = dataclasses.replace(sim, town=embedded)
        self.map_name = town
        rehearse(self.sim, town)  # compile/load the simulator's loops now, not in a client's first call
        self.world = World(self.sim, town)
        self.lock = threading.RLock()
        self.faults = Faults()
        self.traffic_managers: dict[int, str] = {}
        self.weather = {name: 0.0 for name in L.WEATHER_FIELDS}
        self.weather.update(sun_altitude_angle=45.0, fog_distance=0.75, fog_falloff=0.1, mie_scattering_scale=0.03,
                            rayleigh_scattering_scale=0.0331)
        self.control = control  # answer jtd3.* control calls (tests)
        self.on_close: Callable[[], None] | None = None
        self.compute_s = 0.0  # CPU seconds spent in World.tick (benchmarks: the protocol's share of a step)
        self.calls: dict[str, int] = {}  # how often each call was made (unknown ones included)
        self._unknown_logged: set[str] = set()
        self._stop = threading.Event()
        self._mode_changed = threading.Event()  # wakes the asynchronous ticker when the settings change
        if streaming_port is None:
            streaming_port = port + 1 if port else 0
        self.streams = StreamServer(host, streaming_port)
        self.rpc = rpc.RpcServer(host, port, self._dispatch)
        self.host, self.port = self.rpc.host, self.rpc.port
        self._ticker = threading.Thread(target=self._run_async, name="carla-async-tick", daemon=True)
        self._ticker.start()
        log.info("serving %s (embedded %s) on %s:%d, streaming port %d", town, embedded, self.host, self.port,
                 self.streams.port)

    @property
    def map_path(self) -> str:
        return f"Carla/Maps/{self.map_name}"

    # -- RPC ---------------------------------------------------------------------------------------------

    def _dispatch(self, call: rpc.Call) -> Any:
        with self.lock:
            self.calls[call.name] = self.calls.get(call.name, 0) + 1
            left = self.faults.hang.get(call.name, 0)
            if left > 0:
                self.faults.hang[call.name] = left - 1
        if left:
            log.info("fault: leaving call %r unanswered", call.name)
            return None
        handler = HANDLERS.get(call.name)
        if handler is None and self.control:
            handler = CONTROL.get(call.name)
        if handler is None:
            if call.name not in self._unknown_logged:
                self._unknown_logged.add(call.name)
                log.warning("call %r is not served by the jtd3 CARLA server (answered with an error)", call.name)
            message = f"{call.name}: not supported by the jtd3 CARLA server (embedded simulator)"
            return rpc.error_void(message) if call.name in VOID_CALLS else rpc.error_value(message)
        try:
            with self.lock:
                return handler(self, *call.args)
        except ERRORS as e:
            message = f"{call.name}: {e.args[0] if e.args else e}"
            log.debug("call failed: %s", message)
        except Exception as e:  # noqa: BLE001 (a server bug: answer it; an unanswered call can abort the client)
            log.exception("call %r failed", call.name)
            message = f"{call.name}: jtd3 CARLA server error: {type(e).__name__}: {e}"
        return rpc.error_void(message) if call.name in VOID_CALLS else rpc.error_value(message)

    # -- world operations used by the handlers -------------------------------------------------------------

    def actor_object(self, a: Actor) -> list:
        return self.world.actor_object(a, self.streams.token(a.stream_id) if a.stream_id else b"")

    def tick(self) -> int:
        with self.lock:
            t = time.thread_time()
            messages = self.world.tick()
            self.compute_s += time.thread_time() - t  # CPU seconds of simulation and rendering (no publishing)
            frame = self.world.frame
            self._publish(messages)
        return frame

    def _publish(self, messages: list[tuple[int, bytes]]) -> None:
        kinds = {a.stream_id: a.type_id for a in self.world.actors.values() if a.stream_id}
        frame = self.world.frame
        for stream_id, payload in messages:
            kind = kinds.get(stream_id, "world")
            if frame in self.faults.drop_frames.get(kind, ()):
                continue
            delay = self.faults.delay_s.get(kind, 0.0)
            for _ in range(2 if kind in self.faults.duplicate else 1):
                if delay > 0:
                    timer = threading.Timer(delay, self.streams.publish, (stream_id, payload))
                    timer.daemon = True
                    timer.start()
                else:
                    self.streams.publish(stream_id, payload)

    def set_settings(self, obj: list) -> None:
        settings = L.settings_dict(obj, self.world.settings)
        fixed = settings["fixed_delta_seconds"]
        fixed = None if fixed is None else float(fixed)
        if fixed is not None and not 0.001 <= fixed <= 0.5:
            raise ValueError(f"fixed_delta_seconds = {fixed} is outside [0.001, 0.5] s")
        settings["fixed_delta_seconds"] = fixed
        self.world.settings = settings
        self._mode_changed.set()

    def teleport(self, actor_id: int, transform: tuple[float, ...]) -> None:
        a = self.world.actors[actor_id]
        if a.is_vehicle:
            a.state = dataclasses.replace(a.state, x=transform[0], y=transform[1], yaw=transform[4])
        else:
            a.transform = transform

    def load_episode(self, map_name: str, reset_settings: bool) -> None:
        """A new episode of the (only) map: every actor goes; the frame counter goes on, as CARLA's does.

        An empty ``map_name`` (``client.reload_world()``) reloads the current map.
        """
        name = map_name.rsplit("/", 1)[-1] or self.map_name
        if name != self.map_name:
            raise ValueError(f"map {map_name!r} not found; this server serves {self.map_name} only")
        old = self.world
        settings = old.settings
        self.world = World(self.sim, self.map_name)
        self.world.episode_id = old.episode_id + 1
        self.world.continue_ids(old)
        if not reset_settings:
            self.world.settings = settings
        self._mode_changed.set()

    # -- asynchronous mode ---------------------------------------------------------------------------------

    def _run_async(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                synchronous = self.world.settings["synchronous_mode"]
                dt = self.world.delta_seconds
            if synchronous:
                self._mode_changed.wait()
                self._mode_changed.clear()
                continue
            self.tick()
            self._stop.wait(dt)

    # -- lifetime -------------------------------------------------------------------------------------------

    def kill(self) -> None:
        """Drop every connection and stop serving at once (a crashed server)."""
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._mode_changed.set()
        if self.on_close is not None:
            self.on_close()
        self.rpc.close()
        self.streams.close()

    def __enter__(self) -> "CarlaServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
