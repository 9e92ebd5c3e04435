"""The port probe: a raw msgpack-rpc ``version`` call, so the carla client is never pointed at a program that is
not CARLA (that aborts the process)."""

from __future__ import annotations

import socket
import time

from jtd3.backends.carla.errors import CarlaError, CarlaUnavailableError, unavailable_message

__all__ = ["probe_carla_rpc"]

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
