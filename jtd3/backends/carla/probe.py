"""Raw msgpack-rpc calls made beside the carla client: the port probe (a ``version`` call, so the carla client is
never pointed at a program that is not CARLA: that aborts the process) and calls to a Traffic Manager's own RPC
server (reachable while the client's Traffic Manager API is blocked)."""

from __future__ import annotations

import socket
import time
from typing import Any

import msgpack

from jtd3.backends.carla.errors import CarlaError, CarlaUnavailableError, unavailable_message

__all__ = ["call_traffic_manager", "msgpack_rpc_call", "probe_carla_rpc"]

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


def msgpack_rpc_call(host: str, port: int, name: str, args: list[Any], timeout_s: float,
                     msgid: int = 1) -> tuple[Any, Any]:
    """Send one msgpack-rpc request ``[0, msgid, name, args]`` over a plain socket; returns the response's
    ``(error, result)``. Raises ``OSError`` / ``TimeoutError`` when nothing answers, ``ConnectionError`` when
    the connection closes first and ``RuntimeError`` when the reply is not a response to this request."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(msgpack.packb([0, msgid, name, list(args)], use_bin_type=True))
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError(f"{host}:{port} closed the connection during {name}")
            unpacker.feed(data)
            for reply in unpacker:
                if not (isinstance(reply, list) and len(reply) == 4 and reply[0] == 1 and reply[1] == msgid):
                    raise RuntimeError(f"not a msgpack-rpc response to {name}: {reply!r:.200}")
                return reply[2], reply[3]


def call_traffic_manager(port: int, name: str, *args: Any, host: str = "127.0.0.1", timeout_s: float = 5.0) -> Any:
    """Call ``name(*args)`` on the RPC server of the Traffic Manager listening on ``host:port``; returns its result.

    The Traffic Manager that a carla client runs in its process also serves its settings over msgpack-rpc
    (``TrafficManagerServer``: ``set_synchronous_mode``, ``health_check_remote_TM``, ...) for remote clients.
    That path calls the Traffic Manager directly, without the client-side lock that ``world.tick()`` holds
    while it waits for the Traffic Manager's step. Raises ``OSError`` / ``TimeoutError`` when nothing answers
    and ``RuntimeError`` with the server's error.
    """
    error, result = msgpack_rpc_call(host, port, name, list(args), timeout_s)
    if error is not None:
        raise RuntimeError(f"Traffic Manager {name}: {error!r:.200}")
    return result
