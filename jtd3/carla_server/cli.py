"""``jtd3-carla-server``: serve the embedded simulator over CARLA 0.9.16's protocol.

    jtd3-carla-server --port 2000 --town Town01        # streaming on port 2001, as CARLA
    python -m jtd3.carla_server --port 0 --ready-json  # a free port; prints {"port": ..., ...} when ready

Runs until SIGINT/SIGTERM. The carla client must run in another process: the wheel keeps Python's GIL while
it waits for some replies, so a server thread in the client's own process would never answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jtd3-carla-server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=2000, help="RPC port (0: a free one); default 2000")
    p.add_argument("--streaming-port", type=int, default=None, help="streaming port (default port + 1; 0 free)")
    p.add_argument("--town", default="Town01", help="Town01 (CARLA's), or an embedded town: grid3, grid4")
    p.add_argument("--ready-json", action="store_true", help="print one JSON line with the ports when ready")
    p.add_argument("--control", action="store_true",
                   help="answer the jtd3.* control calls (fault injection for tests); off by default")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="stop when standard input closes (a parent process that starts the server and dies)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from jtd3.carla_server.server import CarlaServer  # noqa: PLC0415 (fast --help)

    server = CarlaServer(args.host, args.port, args.streaming_port, town=args.town, control=args.control)
    done = threading.Event()
    server.on_close = done.set
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    if args.exit_on_stdin_eof:
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), name="stdin-eof", daemon=True).start()
    if args.ready_json:
        print(json.dumps({"host": server.host, "port": server.port, "streaming_port": server.streams.port}), flush=True)
    else:
        print(f"jtd3 CARLA server: {args.town} on {server.host}:{server.port} (streaming {server.streams.port}); "
              f"Ctrl-C to stop", flush=True)
    done.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
