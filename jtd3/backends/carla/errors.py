"""The errors the CARLA backend raises, and how to recognise the carla client's timeouts."""

from __future__ import annotations

import re

__all__ = [
    "CarlaEpisodeLost",
    "CarlaError",
    "CarlaSensorTimeout",
    "CarlaSpawnError",
    "CarlaUnavailableError",
    "CarlaVersionError",
    "is_timeout",
    "unavailable_message",
]


class CarlaError(RuntimeError):
    """Base class of every error this module raises about the server."""


class CarlaUnavailableError(CarlaError):
    """No CARLA server answers at host:port (within the client timeout), or reconnecting failed."""


class CarlaVersionError(CarlaError):
    """The server's CARLA version differs from the carla client wheel's."""


class CarlaSpawnError(CarlaError):
    """The ego could not be spawned within the allowed attempts."""


class CarlaSensorTimeout(CarlaError):
    """A sensor did not deliver the frame of the current tick in time."""


class CarlaEpisodeLost(CarlaError):
    """The server timed out during ``step``; the session reconnected but the episode is gone: call ``reset``."""


def unavailable_message(host: str, port: int, timeout_s: float, reason: str) -> str:
    """What to tell a user when nothing usable answers at ``host:port``."""
    return (
        f"no CARLA server reachable at {host}:{port} ({reason}; client timeout {timeout_s:g} s).\n"
        f"Start CARLA 0.9.16 on that machine, e.g.\n"
        f"    ./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}\n"
        f"(it also listens on port {port + 1} for sensor streams), and wait until it accepts connections;\n"
        f"or run on the embedded simulator instead: --env sim"
    )


_TIMEOUT_PATTERN = re.compile(r"time-?out", re.IGNORECASE)


def is_timeout(error: BaseException) -> bool:
    """True for the carla client's network timeout (``RuntimeError('time-out of 5000ms while waiting ...')``)."""
    return (
        isinstance(error, RuntimeError)
        and not isinstance(error, CarlaError)
        and bool(_TIMEOUT_PATTERN.search(str(error)))
    )
