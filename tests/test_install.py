"""A normal (non-editable) install works from any directory: the wheel in a fresh venv, its console scripts,
``python -m jtd3.train`` and the packaged default config (read with importlib.resources)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tiny_run import TINY_RUN

REPO = Path(__file__).resolve().parent.parent


def test_packaged_default_config_is_the_repository_one():
    from jtd3.cli import default_config_path

    assert default_config_path().read_text() == (REPO / "configs" / "default.yaml").read_text()


def test_env_spaces_from_the_config_equal_a_built_envs():
    from fake_carla import FakeServer, make_carla

    from jtd3 import DATA_DIR
    from jtd3.config import from_dict
    from jtd3.envs import DrivingEnv, EnvConfig, make_env
    from jtd3.backends.carla.session import CarlaSession
    from jtd3.evaluate import env_spaces

    sim = from_dict(EnvConfig, {"observation": {"n_waypoints": 7}, "sim": {"camera": {"width": 64}}})
    env = make_env(sim)
    assert env_spaces(sim) == (env.observation_space, env.action_space)
    env.close()
    carla = from_dict(EnvConfig, {"backend": "carla", "carla": {"probe": False, "output_height": 72}})
    server = FakeServer(opendrive=(DATA_DIR / "Town01.xodr").read_text(encoding="utf-8"))
    env = DrivingEnv(carla, backend=CarlaSession(carla.carla, carla_module=make_carla(server)))
    assert env_spaces(carla) == (env.observation_space, env.action_space)
    env.close()


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_from_another_directory(tmp_path):
    # Built from a copy of the sources: an in-tree build writes build/ and *.egg-info into the checkout
    src = tmp_path / "src"
    shutil.copytree(REPO / "jtd3", src / "jtd3", ignore=shutil.ignore_patterns("__pycache__"))  # follows links
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("jtd3-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    # The dependencies (JAX, orbax, ...) come from this interpreter's site-packages, appended after the venv's
    # own (CI has no network to download them again); a plain path entry does not run the .pth files there, so
    # the repository's editable jtd3 stays out and jtd3 comes from the wheel.
    venv_site = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (venv_site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)

    where = run(str(python), "-c", "import jtd3, jtd3.cli as c; print(jtd3.__file__); print(c.default_config_path())")
    assert where.returncode == 0, where.stderr
    module_file, config_file = where.stdout.split()
    assert module_file.startswith(str(venv_site)) and config_file.startswith(str(venv_site)), where.stdout
    assert Path(config_file).read_text() == (REPO / "configs" / "default.yaml").read_text()

    helped = run(str(venv / "bin" / "jtd3-train"), "--help")
    assert helped.returncode == 0 and "usage: jtd3-train" in helped.stdout, helped.stderr
    helped = run(str(python), "-m", "jtd3.train", "--help")
    assert helped.returncode == 0 and "--resume-step" in helped.stdout, helped.stderr

    trained = run(str(venv / "bin" / "jtd3-train"), "--max-timesteps", "80", "--logdir", "runs", "--run-name", "t",
                  *TINY_RUN, "--set", "train.progress_bar=false")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert (elsewhere / "runs" / "t" / "checkpoints" / "80").is_dir()
    assert "jtd3: convolutions: im2col" in trained.stdout, trained.stdout  # `auto` on the CPU
    helped = run(str(venv / "bin" / "jtd3-evaluate"), "--help")
    assert helped.returncode == 0 and "usage: jtd3-evaluate" in helped.stdout, helped.stderr
