"""Run a server in a child process (tests, benchmarks): the carla client cannot share a process with it.

    with ServerProcess() as server:             # 127.0.0.1, free ports; stopped on exit
        client = carla.Client("127.0.0.1", server.port)
        server.control("jtd3.faults", {"tick_cue": 1}, {}, {}, [])   # the next tick never comes

``control`` sends the server's ``jtd3.*`` calls over a plain socket (never through the carla client).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from typing import Any

from jtd3.backends.carla.probe import msgpack_rpc_call

__all__ = ["ServerProcess", "shutdown_traffic_manager"]


def shutdown_traffic_manager(host: str, port: int, tm_port: int, timeout_s: float = 5.0) -> None:
    """Stop the carla client's Traffic Manager on ``tm_port`` in this process.

    A Traffic Manager left running in asynchronous mode (by code that drives the carla client itself, or a
    session with ``tm_shut_down_on_close`` off) keeps calling the server from its own thread; when that server
    goes away, the timeout on that thread aborts this process. Call this before stopping a server that this
    process's carla client used.
    """
    import carla  # noqa: PLC0415

    client = carla.Client(host, port)
    client.set_timeout(timeout_s)
    client.get_trafficmanager(tm_port).shut_down()


class ServerProcess:
    """``python -m jtd3.carla_server --port 0 --ready-json --control`` with its ports read back.

    The server stops when this process closes its standard input: at :meth:`close`, or when this process dies.
    """

    def __init__(self, town: str = "Town01", startup_timeout_s: float = 120.0, log_level: str = "WARNING",
                 extra_args: tuple[str, ...] = ()):
        cmd = [sys.executable, "-m", "jtd3.carla_server", "--host", "127.0.0.1", "--port", "0", "--streaming-port",
               "0", "--town", town, "--ready-json", "--control", "--exit-on-stdin-eof", "--log-level", log_level,
               *extra_args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(startup_timeout_s):
            self.close()
            raise TimeoutError(f"the jtd3 CARLA server did not start within {startup_timeout_s} s")
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError(f"the jtd3 CARLA server exited with code {self.proc.wait()}")
        info = json.loads(line)
        self.host, self.port, self.streaming_port = info["host"], info["port"], info["streaming_port"]
        self._msgid = 0

    def control(self, name: str, *args: Any, timeout_s: float = 10.0) -> Any:
        """Call one of the server's ``jtd3.*`` control calls; returns its value."""
        self._msgid += 1
        # CARLA's calls take a sync Metadata first ([False]) and answer [(kind, value)] (kind 1: a value).
        _, reply = msgpack_rpc_call(self.host, self.port, name, [[False], *args], timeout_s, msgid=self._msgid)
        (kind, result), = reply
        if kind != 1:
            raise RuntimeError(result[0])
        return result

    def kill(self) -> None:
        """SIGKILL: the server dies without closing anything."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
