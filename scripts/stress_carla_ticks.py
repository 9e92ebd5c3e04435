"""Tick a CARLA-protocol server through many short CarlaSessions and count the ticks the watchdog had to wake.

carla 0.9.16's Traffic Manager can deadlock ``world.tick()`` (a lost notification, carla-simulator/carla#9172;
docs/carla.md); CarlaSession's tick watchdog wakes it. This script makes the race likely and shows the run going
on: sessions in a row on one server and one Traffic Manager port (``--keep-tm``: the TM outlives each session,
as it did before sessions shut theirs down), with a NumPy thread keeping the process busy. Without ``--host`` it
starts jtd3's own server (``python -m jtd3.carla_server``) in a child process.

    python scripts/stress_carla_ticks.py --sessions 150 --keep-tm
    python scripts/stress_carla_ticks.py --host 127.0.0.1 --port 2000 --sessions 20    # a real CARLA server
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import threading
import time

import numpy as np

from jtd3.backends.base import Pose, VehicleControl
from jtd3.backends.carla.config import CarlaConfig
from jtd3.backends.carla.session import CarlaSession
from jtd3.carla_server.process import ServerProcess, shutdown_traffic_manager

START = Pose(x=317.74, y=129.49, yaw=180.0)  # the reference route's start in Town01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keep_busy(stop: threading.Event) -> None:
    """GEMMs in a Python thread: the process's threads get preempted as in a training run."""
    a = np.random.default_rng(0).random((200, 200))
    while not stop.is_set():
        a = np.tanh(a @ a.T * 1e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", help="a running server (default: start jtd3's server)")
    ap.add_argument("--port", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--steps", type=int, default=150, help="ticks per session")
    ap.add_argument("--npcs", type=int, default=6)
    ap.add_argument("--keep-tm", action="store_true", help="one Traffic Manager for every session (no shut_down)")
    ap.add_argument("--watchdog-s", type=float, default=3.0, help="carla.tick_watchdog_s (tick_timeout_s is 1 s)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    threading.Thread(target=keep_busy, args=(stop,), daemon=True).start()
    with contextlib.ExitStack() as stack:
        if args.host is None:
            srv = stack.enter_context(ServerProcess())
            host, port = srv.host, srv.port
        else:
            host, port = args.host, args.port
        cfg = CarlaConfig(host=host, port=port, tm_port=free_port(), tick_timeout_s=1.0,
                          tick_watchdog_s=args.watchdog_s, tm_shut_down_on_close=not args.keep_tm)
        stuck, ticks, t0 = 0, 0, time.monotonic()
        for k in range(args.sessions):
            with CarlaSession(cfg) as s:
                s.reset(START, num_vehicles=args.npcs, seed=k)
                for _ in range(args.steps):
                    s.step(VehicleControl(throttle=0.4))
                ticks += args.steps
                if s.stuck_ticks:
                    print(f"session {k}: the watchdog woke {s.stuck_ticks} stuck tick(s); the session went on",
                          flush=True)
                stuck += s.stuck_ticks
        if args.keep_tm:
            shutdown_traffic_manager(host, port, cfg.tm_port)
    stop.set()
    print(f"{args.sessions} sessions, {ticks} ticks in {time.monotonic() - t0:.0f} s: {stuck} stuck tick(s) woken "
          f"by the watchdog, every session completed")


if __name__ == "__main__":
    main()
