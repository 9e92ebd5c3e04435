"""CARLA's streaming protocol: tokens, subscriptions and ``[u32 size][payload]`` messages.

A token (``streaming/detail/Token.h``, 24 packed bytes) names a stream: ``u32 stream_id, u16 port,
u8 protocol (1 = tcp), u8 address type (1 = IPv4), 16 address bytes``. The client asks ``get_sensor_token``
for the token of a stream id, connects to the port the token names, sends the 4-byte stream id, then reads
messages, each a little-endian ``u32`` size and that many bytes. One stream can have several subscribers.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading

from jtd3.carla_server.rpc import hard_close

__all__ = ["StreamServer", "TOKEN_SIZE", "decode_token", "encode_token"]

log = logging.getLogger(__name__)

TOKEN_SIZE = 24
_TOKEN = struct.Struct("<IHBB16s")
_SIZE = struct.Struct("<I")
SUBSCRIBE_WAIT_S = 2.0
SEND_TIMEOUT_S = 10.0
PROTOCOL_TCP, ADDRESS_V4 = 1, 1


def encode_token(stream_id: int, host: str, port: int) -> bytes:
    """The 24 token bytes of ``stream_id`` served at ``host:port`` (IPv4)."""
    addr = ipaddress.IPv4Address(host).packed.ljust(16, b"\0")
    return _TOKEN.pack(stream_id, port, PROTOCOL_TCP, ADDRESS_V4, addr)


def decode_token(token: bytes) -> tuple[int, str, int]:
    """``(stream_id, host, port)`` of a token (IPv4 TCP tokens only)."""
    if len(token) != TOKEN_SIZE:
        raise ValueError(f"a token has {TOKEN_SIZE} bytes, got {len(token)}")
    stream_id, port, protocol, address_type, addr = _TOKEN.unpack(token)
    if (protocol, address_type) != (PROTOCOL_TCP, ADDRESS_V4):
        raise ValueError(f"not an IPv4 TCP token (protocol {protocol}, address type {address_type})")
    return stream_id, str(ipaddress.IPv4Address(addr[:4])), port


class StreamServer:
    """Accepts stream subscriptions on ``host:port`` and publishes payloads to a stream's subscribers."""

    def __init__(self, host: str, port: int = 0):
        self._sock = socket.create_server((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self._subscribers: dict[int, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Condition(self._lock)
        self._closed = False
        self._expected: set[int] = set()  # tokens handed out, subscriber not connected yet
        threading.Thread(target=self._accept, name=f"carla-stream:{self.port}", daemon=True).start()

    def token(self, stream_id: int) -> bytes:
        return encode_token(stream_id, self.host, self.port)

    def expect(self, stream_id: int) -> bytes:
        """The token of ``stream_id`` for a client about to subscribe: the next :meth:`publish` on it waits
        (at most ``SUBSCRIBE_WAIT_S``) for the client's connection, which it opens asynchronously after
        ``get_sensor_token`` returns; without the wait a sensor's first frames would go to nobody."""
        with self._lock:
            self._expected.add(stream_id)
        return self.token(stream_id)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(conn,), name="carla-stream-sub", daemon=True).start()

    def _handshake(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            conn.settimeout(10.0)
            while len(buf) < 4:
                chunk = conn.recv(4 - len(buf))
                if not chunk:
                    conn.close()
                    return
                buf += chunk
            conn.settimeout(None)
        except OSError:
            conn.close()
            return
        (stream_id,) = _SIZE.unpack(buf)
        with self._lock:
            if self._closed:
                conn.close()
                return
            self._subscribers.setdefault(stream_id, []).append(conn)
            self._expected.discard(stream_id)
            self._subscribed.notify_all()
        log.debug("stream %d: subscriber connected", stream_id)
        try:
            # A subscriber that stops reading must not block the tick that publishes: sends time out (and drop it).
            conn.settimeout(SEND_TIMEOUT_S)
            # Detect the client closing its end (unsubscribe): a read returns b"".
            while True:
                try:
                    if not conn.recv(64):
                        break
                except socket.timeout:
                    continue
        except OSError:  # closed under us (server close, or dropped by a publish that timed out)
            pass
        self._drop(stream_id, conn)

    def _drop(self, stream_id: int, conn: socket.socket) -> None:
        with self._lock:
            subs = self._subscribers.get(stream_id, [])
            if conn in subs:
                subs.remove(conn)
        try:
            conn.close()
        except OSError:
            pass

    def has_subscribers(self, stream_id: int) -> bool:
        with self._lock:
            return bool(self._subscribers.get(stream_id))

    def wait_subscribed(self, stream_id: int, timeout_s: float) -> bool:
        """Block until ``stream_id`` has a subscriber (the client connects asynchronously after subscribing)."""
        with self._subscribed:
            return self._subscribed.wait_for(lambda: bool(self._subscribers.get(stream_id)), timeout_s)

    def publish(self, stream_id: int, payload: bytes) -> int:
        """Send one message to every subscriber of ``stream_id``; returns how many received it."""
        with self._lock:
            subs = list(self._subscribers.get(stream_id, ()))
            pending = stream_id in self._expected
        if not subs and pending:
            self.wait_subscribed(stream_id, SUBSCRIBE_WAIT_S)
            with self._lock:
                subs = list(self._subscribers.get(stream_id, ()))
                self._expected.discard(stream_id)
        if not subs:
            return 0
        message = _SIZE.pack(len(payload)) + payload
        sent = 0
        for conn in subs:
            try:
                conn.sendall(message)
                sent += 1
            except OSError as e:  # closed, reset, or not reading for SEND_TIMEOUT_S
                log.debug("stream %d: dropping a subscriber: %s", stream_id, e)
                self._drop(stream_id, conn)
        return sent

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for subs in self._subscribers.values() for c in subs]
            self._subscribers.clear()
        for c in [self._sock, *conns]:
            hard_close(c)
