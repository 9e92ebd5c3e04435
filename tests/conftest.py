"""Shared test setup.

The helper modules in tests/ (``fake_carla``, ``env_double``, ``tiny_run``, ``carla_protocol_fixtures``,
``ckpt_kill_worker``) are plain modules that test files import by name. This conftest puts tests/ on
``sys.path`` explicitly, so those imports do not depend on pytest's import mode, and offers the CARLA-protocol
server fixture (``server``, one server child process per test module) to every test file; a module that
defines its own ``server`` fixture uses that one.

Markers (registered in pyproject.toml, ``--strict-markers``): ``slow`` (over ~20 s on a 2-core CPU; skip with
``-m "not slow"``) and ``carla_server`` (needs a real CARLA server at ``$JTD3_CARLA_HOST``).
"""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from carla_protocol_fixtures import server  # noqa: E402,F401 (a fixture, offered to every test file)
