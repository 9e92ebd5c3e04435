"""jtd3: TD3 in JAX/Flax that learns to drive from a camera stack plus a kinematic vector.

Data flow (one folder per stage):
    jtd3/sim (embedded world) or a CARLA server (jtd3/envs/carla_session.py)
      -> jtd3/envs (gymnasium DrivingEnv: observation, reward, termination)
      -> jtd3/train.py (Python actor loop) -> jtd3/replay.py (NumPy replay buffer)
      -> jtd3/agent (pure jitted TD3: act, update, update_many) -> logs / checkpoints
"""

from pathlib import Path

__version__ = "0.1.0"

DATA_DIR = Path(__file__).resolve().parent / "data"
"""Shipped data: CARLA's Town01 OpenDRIVE file and the reference route (see data/README.md)."""
