"""Import the ``jtd3`` package of another git revision beside the current one, for same-process A/B timing.

Benchmarks on a shared VM must compare two versions in one process, alternating short chunks, or the
machine's drift (up to 2x within an hour here) swamps the difference. :func:`import_revision` extracts
``jtd3/`` of ``rev`` (``git archive``) into a directory under the system's temporary directory as the package
``jtd3_<sha>`` (its own absolute imports rewritten) and imports it, so ``old.envs.make_env`` and
``jtd3.envs.make_env`` live side by side.
"""

from __future__ import annotations

import importlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

_ROOT = Path(__file__).resolve().parent.parent


def import_revision(rev: str) -> ModuleType:
    """The ``jtd3`` package as it was at git revision ``rev`` (anything ``git archive`` accepts).

    The copy is kept in ``<tmp>/jtd3_revisions/<sha>`` and reused, with the numba machine code its first
    import compiled there (a fresh copy would compile it again, about 20 s).
    """
    sha = subprocess.run(["git", "rev-parse", "--short=12", rev], cwd=_ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    name = f"jtd3_{sha}"
    if name in sys.modules:
        return sys.modules[name]
    home = Path(tempfile.gettempdir()) / "jtd3_revisions" / sha
    if not (home / name / "__init__.py").exists():
        home.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{sha}.", dir=home.parent))
        tar = subprocess.run(["git", "archive", sha, "jtd3"], cwd=_ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(work, filter="data")
        (work / "jtd3").rename(work / name)
        pattern = re.compile(r"\b(from|import) jtd3(?=[\s.])")
        for path in (work / name).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            path.write_text(pattern.sub(rf"\1 {name}", text), encoding="utf-8")
        try:
            work.rename(home)  # atomic: a concurrent caller either wins or finds the finished copy
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
    sys.path.insert(0, str(home))
    return importlib.import_module(name)
