"""Control calls of a server started with ``--control`` (tests, benchmarks; never sent by a carla client):
fault injection, a kill switch, and what the server saw. :class:`jtd3.carla_server.process.ServerProcess`
sends them over a plain socket.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from jtd3.carla_server import rpc

if TYPE_CHECKING:
    from jtd3.carla_server.server import CarlaServer

__all__ = ["CONTROL"]


def _faults(s: CarlaServer, hang: dict, drop_frames: dict, delay_s: dict, duplicate: list = ()) -> list:
    s.faults.duplicate = set(duplicate)
    s.faults.hang = {str(k): int(v) for k, v in hang.items()}
    s.faults.drop_frames = {k: set(v) for k, v in drop_frames.items()}
    s.faults.delay_s = {k: float(v) for k, v in delay_s.items()}
    return rpc.value(True)


def _kill(s: CarlaServer) -> list:
    threading.Thread(target=s.kill, daemon=True).start()  # after this call's reply
    return rpc.value(True)


CONTROL: dict[str, Callable[..., Any]] = {
    "jtd3.faults": _faults,
    "jtd3.kill": _kill,
    "jtd3.calls": lambda s: rpc.value(dict(s.calls)),
    "jtd3.state": lambda s: rpc.value({"frame": s.world.frame, "compute_s": s.compute_s, "settings": {
        k: v for k, v in s.world.settings.items()}, "actors": {a.id: a.type_id for a in s.world.actors.values()}}),
}
