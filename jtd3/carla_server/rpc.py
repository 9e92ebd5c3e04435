"""msgpack-RPC (rpclib) framing as CARLA 0.9.16's client speaks it, on a threaded TCP server.

Wire format (LibCarla ``rpc/Client.h``, ``rpc/Metadata.h``, ``rpc/Response.h``):

- request ``[0, msgid, name, [metadata, arg1, ...]]``; ``metadata`` is ``rpc::Metadata`` = ``[is_async]``.
  Asynchronous calls are type-0 requests too; the client discards their reply, we send it anyway.
- reply ``[1, msgid, nil, result]``. CARLA wraps most results in ``rpc::Response<T>``: a value is
  ``[[1, value]]``, an error ``[[0, [message]]]``; ``Response<void>`` is ``[[false]]`` (no error) or
  ``[[true, [message]]]``. A few calls (``apply_batch``) return a bare value.

The client turns an error ``Response`` into a Python ``RuntimeError``. A reply of the wrong *type* makes the
client throw ``msgpack::type_error``, which aborts the whole process when it happens on a thread Python does
not own (the Traffic Manager's): every handler must answer with exactly the type the client expects.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from typing import Any, Callable

import msgpack

__all__ = [
    "Call", "CallError", "Raw", "RpcServer", "encode_reply", "error_value", "error_void", "hard_close", "value", "void",
]

log = logging.getLogger(__name__)

REQUEST, RESPONSE = 0, 1


class CallError(Exception):
    """Raised by a handler: becomes a typed error reply (a ``RuntimeError`` in the client)."""


@dataclasses.dataclass(frozen=True)
class Raw:
    """A result sent as is, without the ``Response`` wrapper (``apply_batch``)."""

    obj: Any


def value(obj: Any) -> list:
    """``Response<T>`` holding a value."""
    return [[1, obj]]


def error_value(message: str) -> list:
    """``Response<T>`` holding an error."""
    return [[0, [message]]]


def void() -> list:
    """``Response<void>`` without error."""
    return [[False]]


def error_void(message: str) -> list:
    """``Response<void>`` holding an error."""
    return [[True, [message]]]


def encode_reply(msgid: int, result: Any) -> bytes:
    return msgpack.packb([RESPONSE, msgid, None, result], use_bin_type=True)


@dataclasses.dataclass
class Call:
    """One handled call: its name, arguments (metadata removed) and whether the client waits for it."""

    name: str
    args: list
    is_async: bool


class RpcServer:
    """Accepts connections on ``host:port``; one thread per connection reads requests in order.

    ``dispatch(call)`` returns the already wrapped result (``value(...)``, ``void()``, ``Raw``...), or ``None``
    to leave the request unanswered (fault injection: a call that never returns).
    """

    def __init__(self, host: str, port: int, dispatch: Callable[[Call], Any]):
        self._dispatch = dispatch
        self._sock = socket.create_server((host, port), reuse_port=False)
        self.host, self.port = self._sock.getsockname()[:2]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"carla-rpc:{self.port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="carla-rpc-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        try:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    return
                unpacker.feed(data)
                for message in unpacker:
                    reply = self._handle(message)
                    if reply is not None:
                        conn.sendall(reply)
        except (OSError, ValueError) as e:  # ValueError: msgpack garbage from a foreign program
            if not self._closed:
                log.debug("rpc connection closed: %s", e)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, message: Any) -> bytes | None:
        if not (isinstance(message, list) and len(message) == 4 and message[0] == REQUEST):
            log.warning("ignoring a message that is not a msgpack-rpc request: %.80r", message)
            return None
        _, msgid, name, params = message
        log.debug("request %s %r", msgid, message[2:])
        params = list(params) if isinstance(params, (list, tuple)) else [params]
        is_async = False
        if params and isinstance(params[0], list) and len(params[0]) == 1 and isinstance(params[0][0], bool):
            is_async = params[0][0]
            params = params[1:]
        result = self._dispatch(Call(str(name), params, is_async))
        if result is None:
            return None
        if isinstance(result, Raw):
            result = result.obj
        return encode_reply(msgid, result)

    def close(self) -> None:
        """Stop accepting and drop every connection (the client sees the server die)."""
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        for c in [self._sock, *conns]:
            hard_close(c)


def hard_close(sock: socket.socket) -> None:
    """Shut a socket down both ways (the peer sees the connection end at once) and close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
