"""jtd3: TD3 in JAX/Flax that learns to drive from a camera stack plus a kinematic vector.

Data flow (one folder per stage):
    jtd3/roads (OpenDRIVE, road network, routes: used by both backends)
      -> jtd3/backends (base.py contract; sim/ the embedded world, or carla/ a CARLA server)
      -> jtd3/envs (gymnasium DrivingEnv: observation, reward, route tracking, termination)
      -> jtd3/train.py (Python actor loop) -> jtd3/replay.py (NumPy replay buffer)
      -> jtd3/agent (networks, conv op, diagnostics; pure jitted TD3: act, update, update_many)
      -> jtd3/logging.py, jtd3/checkpoint.py; jtd3/evaluate.py; configs in jtd3/run_config.py and each package
"""

from pathlib import Path

__version__ = "0.1.0"

DATA_DIR = Path(__file__).resolve().parent / "data"
"""Shipped data: CARLA's Town01 OpenDRIVE file and the reference route (see data/README.md)."""
