"""A CARLA server that the session starts itself (``carla.server_command``)."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time

from jtd3.backends.carla.errors import CarlaError, CarlaUnavailableError
from jtd3.backends.carla.probe import probe_carla_rpc

__all__ = ["ServerProcess"]

log = logging.getLogger(__name__)


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
