"""Shared by the tests that drive jtd3's CARLA-protocol server with the real client and its Traffic Manager."""

import socket

import pytest

from jtd3.carla_server.process import ServerProcess, shutdown_traffic_manager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """A server child process per test module, with a free Traffic Manager port (``server.tm_port``)."""
    with ServerProcess() as srv:
        srv.tm_port = free_port()
        yield srv
        shutdown_traffic_manager(srv.host, srv.port, srv.tm_port)  # before the server goes (see process.py)
