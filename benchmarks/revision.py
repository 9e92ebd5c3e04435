"""Import the ``jtd3`` package of another git revision beside the current one, for same-process A/B timing.

Benchmarks on a shared VM must compare two versions in one process, alternating short chunks, or the
machine's drift (up to 2x within an hour here) swamps the difference. :func:`import_revision` extracts
``jtd3/`` of ``rev`` (``git archive``) into a temporary directory as the package ``jtd3_<rev>`` (its own
absolute imports rewritten) and imports it, so ``old.envs.make_env`` and ``jtd3.envs.make_env`` live side by
side.
"""

from __future__ import annotations

import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

_ROOT = Path(__file__).resolve().parent.parent


def import_revision(rev: str) -> ModuleType:
    """The ``jtd3`` package as it was at git revision ``rev`` (anything ``git archive`` accepts)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=_ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    name = f"jtd3_{sha}"
    if name in sys.modules:
        return sys.modules[name]
    tar = subprocess.run(["git", "archive", sha, "jtd3"], cwd=_ROOT, check=True, capture_output=True).stdout
    dest = Path(tempfile.mkdtemp(prefix="jtd3_rev_"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    (dest / "jtd3").rename(dest / name)
    pattern = re.compile(r"\b(from|import) jtd3(?=[\s.])")
    for path in (dest / name).rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(pattern.sub(rf"\1 {name}", text), encoding="utf-8")
    sys.path.insert(0, str(dest))
    return importlib.import_module(name)
