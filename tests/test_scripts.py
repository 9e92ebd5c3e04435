"""Every command-line script answers ``--help`` with its usage, exits 0 and writes nothing.

A script that read ``sys.argv`` by hand took ``--help`` for an output path (write_default_config.py wrote the
configuration to a file named ``--help``); this runs each one the way a newcomer would first try it.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*REPO.glob("scripts/*.py"), *REPO.glob("benchmarks/*.py")])
NOT_CLIS = {"benchmarks/machine_info.py", "benchmarks/matmul_flops.py", "benchmarks/revision.py"}  # helper modules


def _help(script: Path, cwd: Path) -> tuple[Path, subprocess.CompletedProcess]:
    env = dict(os.environ, JTD3_HUGE_PAGES="0", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    return script, proc


def test_every_script_answers_help_without_side_effects(tmp_path):
    clis = [s for s in SCRIPTS if str(s.relative_to(REPO)) not in NOT_CLIS]
    assert len(clis) >= 15, clis
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda s: _help(s, tmp_path), clis))
    for script, proc in results:
        name = script.relative_to(REPO)
        assert proc.returncode == 0, f"{name} --help exited {proc.returncode}: {proc.stderr[-600:]}"
        assert "usage:" in proc.stdout, f"{name} --help printed no usage: {proc.stdout[:300]!r}"
    assert list(tmp_path.iterdir()) == [], f"--help left files behind: {list(tmp_path.iterdir())}"


@pytest.mark.parametrize("helper", sorted(NOT_CLIS))
def test_helper_modules_are_not_scripts(helper):
    """The modules skipped above are imported by the benchmarks, not run (no ``__main__`` block)."""
    assert "__main__" not in (REPO / helper).read_text(), f"{helper} became a script: add it to the --help test"
