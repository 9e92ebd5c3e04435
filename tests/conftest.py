"""Shared test setup.

The helper modules in tests/ (``fake_carla``, ``env_double``, ``tiny_run``, ``carla_protocol_fixtures``,
``ckpt_kill_worker``) are plain modules that test files import by name. This conftest puts tests/ on
``sys.path`` explicitly, so those imports do not depend on pytest's import mode, and offers the CARLA-protocol
server fixture (``server``, one server child process per test module) to every test file; a module that
defines its own ``server`` fixture uses that one. It also gives the session one JAX compilation cache and
lighter XLA optimisation (below).

Markers (registered in pyproject.toml, ``--strict-markers``): ``slow`` (over ~20 s on a 2-core CPU; skip with
``-m "not slow"``) and ``carla_server`` (needs a real CARLA server at ``$JTD3_CARLA_HOST``).
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# One JAX compilation cache for the whole session, in a fresh temporary directory (set before anything imports
# JAX; subprocesses inherit it): the training CLI runs, worker processes and Ray actors the tests start each
# compile the same update and act functions, and with the cache only the first one compiles them. A cache the
# caller chose (JAX_COMPILATION_CACHE_DIR already set) is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="jtd3-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # small functions too
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# XLA's backend at optimisation level 0: the suite compiles dozens of distinct updates (every norm x topology)
# and runs few steps of each, so compile time dominates; level 0 compiles those tests about 30 % faster. The
# code under test is the same; only LLVM's optimisation of the generated machine code is lighter. Flags the
# caller set (XLA_FLAGS) are kept as they are.
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0"

from carla_protocol_fixtures import server  # noqa: E402,F401 (a fixture, offered to every test file)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run first (a stable sort; otherwise the order is pytest's). The suite runs on two
    workers (``pytest -n 2 --dist worksteal``): started early, the long tests (training runs, Ray clusters) overlap
    the short ones, instead of one of them running alone at the end while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
