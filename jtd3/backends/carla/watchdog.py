"""A watchdog for calls that can block forever: it runs a recovery action when a watched call overruns.

carla 0.9.16's ``world.tick()`` ends with the Traffic Manager's synchronous step, which waits on a condition
variable with no timeout; its worker thread and the ticking thread notify each other without holding the mutex,
so a notification can be lost and both wait forever (carla-simulator/carla#9172, fixed after 0.9.16 by #9344).
Every other wait inside ``tick`` has a timeout, so a tick that outlives them is stuck there. Switching the
Traffic Manager's synchronous mode off wakes its worker, which finishes the step and wakes the tick; switching it
back on restores synchronous stepping. :class:`CarlaSession` watches each tick with this class to do that.

    watchdog = Watchdog(after_s=25.0, on_overrun=unstick, name="carla-tick")
    with watchdog.watch():
        world.tick(10.0)          # if it takes longer than 25 s, unstick() runs (again every 25 s)
    watchdog.close()
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["Watchdog"]

log = logging.getLogger(__name__)


class Watchdog:
    """Runs ``on_overrun()`` from its own thread when a :meth:`watch` block lasts longer than ``after_s``.

    ``on_overrun`` runs again every ``after_s`` while the block lasts; ``overruns`` counts the calls. The thread
    starts at the first :meth:`watch` and stops at :meth:`close`. Exceptions of ``on_overrun`` are logged.
    """

    def __init__(self, after_s: float, on_overrun: Callable[[], None], name: str = "watchdog"):
        if not after_s > 0:
            raise ValueError(f"after_s must be > 0, got {after_s}")
        self.after_s, self.name = after_s, name
        self._on_overrun = on_overrun
        self._cond = threading.Condition()
        self._deadline: float | None = None  # monotonic time at which the watched block overruns
        self._closed = False
        self._thread: threading.Thread | None = None
        self.overruns = 0

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"watchdog {self.name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._deadline = time.monotonic() + self.after_s
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None
                self._cond.notify_all()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._deadline = time.monotonic() + self.after_s  # still stuck then: run it again
                self.overruns += 1
                self._cond.release()  # the watched thread may need the lock to finish its block
                try:
                    self._on_overrun()
                except Exception:  # noqa: BLE001 (the watchdog keeps watching; the failure is logged)
                    log.exception("watchdog %s: the overrun action failed", self.name)
                finally:
                    self._cond.acquire()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
