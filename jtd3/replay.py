"""NumPy replay buffer that stores each camera frame once and rebuilds frame stacks at sample time.

Layout
------
The buffer is a ring of ``capacity`` *slots*. Slot ``s`` holds one observation: its newest camera frame
(uint8, ``frame_shape``), its kinematic vector (float32) and ``ep_pos[s]`` = min(steps since the episode's
reset, stack - 1). A transition starting at slot ``s`` (its action, reward, ``terminated``, ``truncated``)
is stored in slot ``s`` and its next observation is slot ``s + 1``; ``valid[s]`` says the transition may be
sampled. An episode of T transitions therefore fills T + 1 slots: the last slot holds the episode's final
observation (the ``next_obs`` of a terminated or truncated step), which is never the start of a
transition. Nothing is stored twice: a continuing step writes one new frame (its ``next_obs``), a step that
starts an episode writes two (the reset observation and ``next_obs``).

Stacks are rebuilt oldest frame first: frame ``j`` of the stack at slot ``t`` (``j = 0`` newest) is the
frame of slot ``t - min(j, ep_pos[t])``, so a stack never reaches into another episode and, at an episode
start, repeats the reset frame exactly as the environment's frame stack does. :meth:`ReplayBuffer.add`
checks that contract on the arrays it is given (see there), so a sampled ``obs``/``next_obs`` is exactly
what was added.

Wrap-around: writing slot ``w`` overwrites the oldest observation; the transition that started there and
any older transition whose stack reached back to ``w`` (those at ``w + k`` with ``ep_pos >= k``) are
marked invalid, so a stack never mixes overwritten data.

Streams: several environments that step at the same time (the trainer's ``train.actors.num_envs``) each write their
own episode stream. ``streams = S`` cuts the ring into S equal regions of ``capacity // S`` slots (the
remainder stays unused); stream i writes only region i and wraps around inside it, so the slot after an
observation is always the next observation of the same environment. Sampling is uniform over the valid
transitions of all regions.

Units: sizes in bytes unless a name says GB (1e9 bytes) or KB (1e3 bytes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jtd3.config import ConfigNode, check, param

__all__ = [
    "InsufficientMemoryError",
    "ReplayBuffer",
    "ReplayConfig",
    "available_memory_bytes",
    "bytes_per_slot",
    "required_gb",
]

FORMAT_VERSION = 2  # 2: per-stream heads, fills and open flags (version 1 = one stream, still read)
_MEMINFO = "/proc/meminfo"
# Per-slot arrays and their dtypes (shapes are (capacity, ...)); the order is the on-disk order.
_ARRAY_NAMES = ("frames", "kinematics", "action", "reward", "terminated", "truncated", "valid", "ep_pos")


@dataclasses.dataclass(frozen=True)
class ReplayConfig(ConfigNode):
    """Replay settings (YAML section ``replay``)."""

    capacity: int = param(
        1_000_000,
        "ring size in slots (one observation frame each); it holds capacity minus one slot per stored episode end"
        " transitions",
    )
    memory_limit_gb: float | None = param(
        None, "refuse a capacity needing more than this many GB (1e9 bytes); null: MemAvailable in /proc/meminfo"
    )

    def __post_init__(self):
        check(self.capacity >= 16, "replay.capacity", self.capacity, ">= 16")
        check(
            self.memory_limit_gb is None or self.memory_limit_gb > 0,
            "replay.memory_limit_gb",
            self.memory_limit_gb,
            "> 0 or null",
        )


class InsufficientMemoryError(MemoryError):
    """The requested capacity does not fit in the memory limit; raised before anything is allocated."""


def bytes_per_slot(frame_shape: tuple[int, ...], kinematics_dim: int, action_dim: int) -> dict[str, int]:
    """Bytes one slot needs, per array (``frames``, ``kinematics``, ...), plus ``"total"``."""
    parts = {
        "frames": int(np.prod(frame_shape)) * 1,
        "kinematics": kinematics_dim * 4,
        "action": action_dim * 4,
        "reward": 4,
        "terminated": 1,
        "truncated": 1,
        "valid": 1,
        "ep_pos": 1,
    }
    parts["total"] = sum(parts.values())
    return parts


def available_memory_bytes(meminfo_path: str = _MEMINFO) -> int:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (the kernel reports KiB).

    Raises RuntimeError naming the file when it cannot be read (non-Linux): pass an explicit limit instead.
    """
    try:
        with open(meminfo_path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    fields = line.split()
                    if len(fields) == 3 and fields[2] == "kB":
                        return int(fields[1]) * 1024
                    break
    except OSError as e:
        raise RuntimeError(
            f"cannot read available memory from {meminfo_path} ({e}); pass memory_limit_bytes "
            "(config replay.memory_limit_gb) explicitly"
        ) from None
    raise RuntimeError(
        f"no 'MemAvailable: <n> kB' line in {meminfo_path}; pass memory_limit_bytes "
        "(config replay.memory_limit_gb) explicitly"
    )


def _check_fits(capacity: int, per_slot: dict[str, int], limit: int | None) -> None:
    needed = capacity * per_slot["total"]
    if limit is None:
        available, source = available_memory_bytes(), f"MemAvailable in {_MEMINFO}"
    else:
        available, source = int(limit), "the explicit memory limit"
    if needed > available:
        detail = ", ".join(f"{k} {v}" for k, v in per_slot.items() if k != "total")
        raise InsufficientMemoryError(
            f"replay buffer capacity {capacity:,} needs {needed / 1e9:.2f} GB "
            f"({per_slot['total']:,} bytes per transition slot: {detail}) but only "
            f"{available / 1e9:.2f} GB are available ({source}); the largest capacity that fits is "
            f"{available // per_slot['total']:,} (set replay.capacity lower or free memory)"
        )


def _as_array(value: Any, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    if arr.dtype != dtype:
        if dtype == np.uint8 or not np.can_cast(arr.dtype, dtype, casting="same_kind"):
            raise ValueError(f"{name} has dtype {arr.dtype}, expected {np.dtype(dtype).name}")
        arr = arr.astype(dtype)
    return arr


class ReplayBuffer:
    """Ring buffer of single uint8 frames; see the module docstring for the layout.

    Args:
        capacity: number of slots (>= stack + 2). Each step adds one slot, each episode one more for its
            final observation, so ``len(buffer) <= capacity - 1``.
        frame_shape: shape of one camera frame, e.g. ``(84, 84)``; the observation's camera is
            ``(stack, *frame_shape)`` uint8, oldest frame first.
        stack: frames per observation.
        kinematics_dim: length K of the float32 kinematic vector.
        action_dim: length of the float32 action.
        seed: seed of the sampling generator (NumPy PCG64); its state is part of :meth:`state_dict`.
        memory_limit_bytes: refuse capacities needing more than this; None reads ``MemAvailable``.
        streams: independent episode streams (one per environment stepping at the same time); see the
            module docstring. Each stream gets ``capacity // streams`` slots (>= stack + 2).

    Raises:
        InsufficientMemoryError: before allocating, when ``capacity * bytes_per_slot`` exceeds the limit.
        ValueError: for invalid sizes.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, ...] = (84, 84),
        stack: int = 4,
        *,
        kinematics_dim: int,
        action_dim: int = 2,
        seed: int = 0,
        memory_limit_bytes: int | None = None,
        streams: int = 1,
    ):
        frame_shape = tuple(int(d) for d in frame_shape)
        if stack < 1:
            raise ValueError(f"stack = {stack}: must be >= 1")
        if streams < 1:
            raise ValueError(f"streams = {streams}: must be >= 1")
        if capacity // streams < stack + 2:
            raise ValueError(
                f"capacity = {capacity}: must be >= streams * (stack + 2) = {streams * (stack + 2)} "
                f"({streams} stream(s) of at least stack + 2 slots each)"
            )
        if stack > 256:
            raise ValueError(f"stack = {stack}: must be <= 256 (ep_pos is uint8)")
        if not frame_shape or any(d < 1 for d in frame_shape):
            raise ValueError(f"frame_shape = {frame_shape}: must be non-empty positive sizes")
        if kinematics_dim < 0 or action_dim < 1:
            raise ValueError(f"kinematics_dim = {kinematics_dim}, action_dim = {action_dim}: must be >= 0 and >= 1")
        self.capacity = int(capacity)
        self.frame_shape = frame_shape
        self.stack = int(stack)
        self.kinematics_dim = int(kinematics_dim)
        self.action_dim = int(action_dim)
        self.streams = int(streams)
        self.region = self.capacity // self.streams  # slots per stream: stream i owns [i * region, (i + 1) * region)
        self.bytes_per_slot = bytes_per_slot(frame_shape, kinematics_dim, action_dim)
        _check_fits(self.capacity, self.bytes_per_slot, memory_limit_bytes)

        n = self.capacity
        # np.zeros maps zero pages lazily: resident memory grows as the buffer fills.
        self.frames = np.zeros((n, *frame_shape), np.uint8)
        self.kinematics = np.zeros((n, kinematics_dim), np.float32)
        self.action = np.zeros((n, action_dim), np.float32)
        self.reward = np.zeros((n,), np.float32)
        self.terminated = np.zeros((n,), np.bool_)
        self.truncated = np.zeros((n,), np.bool_)
        self.valid = np.zeros((n,), np.bool_)
        self.ep_pos = np.zeros((n,), np.uint8)

        # Per stream: slot of its newest observation (-1 when empty), slots ever written (at most region),
        # and whether its head slot is a non-final observation the next add continues from.
        self._heads = [-1] * self.streams
        self._fills = [0] * self.streams
        self._open = [False] * self.streams
        self._n_valid = 0
        self._steps_added = 0  # transitions ever added
        self._episodes_started = 0
        self._rng = np.random.Generator(np.random.PCG64(seed))

    # ------------------------------------------------------------------------------------------------------
    # Construction helpers

    @classmethod
    def from_spaces(
        cls,
        capacity: int,
        observation_space: Any,
        action_space: Any,
        *,
        seed: int = 0,
        memory_limit_bytes: int | None = None,
        streams: int = 1,
    ) -> ReplayBuffer:
        """Build from a gymnasium ``Dict`` observation space (``camera`` uint8 ``(stack, *frame)``,
        ``kinematics`` float32 ``(K,)``) and a ``Box`` action space of shape ``(A,)``."""
        spaces = getattr(observation_space, "spaces", None)
        if not isinstance(spaces, Mapping) or set(spaces) != {"camera", "kinematics"}:
            raise ValueError(
                f"observation_space must be a gymnasium Dict with keys 'camera' and 'kinematics', got {observation_space}"
            )
        cam, kin = spaces["camera"], spaces["kinematics"]
        if cam.dtype != np.uint8 or len(cam.shape) < 2:
            raise ValueError(f"camera space must be uint8 (stack, *frame_shape), got {cam}")
        if kin.dtype != np.float32 or len(kin.shape) != 1:
            raise ValueError(f"kinematics space must be float32 (K,), got {kin}")
        if action_space.shape is None or len(action_space.shape) != 1:
            raise ValueError(f"action space must be a Box of shape (A,), got {action_space}")
        return cls(
            capacity,
            frame_shape=tuple(cam.shape[1:]),
            stack=cam.shape[0],
            kinematics_dim=kin.shape[0],
            action_dim=action_space.shape[0],
            seed=seed,
            memory_limit_bytes=memory_limit_bytes,
            streams=streams,
        )

    @classmethod
    def from_config(
        cls, config: ReplayConfig, observation_space: Any, action_space: Any, *, seed: int, streams: int = 1
    ) -> ReplayBuffer:
        """:meth:`from_spaces` with the capacity and memory limit of a :class:`ReplayConfig`."""
        limit = None if config.memory_limit_gb is None else int(config.memory_limit_gb * 1e9)
        return cls.from_spaces(config.capacity, observation_space, action_space, seed=seed, memory_limit_bytes=limit,
                               streams=streams)

    # ------------------------------------------------------------------------------------------------------
    # Properties

    def __len__(self) -> int:
        """Number of transitions that can be sampled."""
        return self._n_valid

    @property
    def nbytes(self) -> int:
        """Bytes held by the slot arrays (allocated; resident once written)."""
        return sum(getattr(self, name).nbytes for name in _ARRAY_NAMES)

    @property
    def steps_added(self) -> int:
        """Transitions added since creation (not reduced by overwriting)."""
        return self._steps_added

    @property
    def episodes_started(self) -> int:
        return self._episodes_started

    @property
    def episode_open(self) -> bool:
        """True when the next :meth:`add` to stream 0 continues its current episode."""
        return self._open[0]

    def is_episode_open(self, stream: int) -> bool:
        """True when the next :meth:`add` to ``stream`` continues its current episode."""
        return self._open[self._check_stream(stream)]

    @property
    def _head(self) -> int:
        """Slot of the newest observation of stream 0 (-1 when empty)."""
        return self._heads[0]

    @property
    def _filled(self) -> int:
        """Length of the prefix of the slot arrays that holds everything written (what :meth:`save` writes)."""
        return _written_extent(self._fills, self.region)

    def _check_stream(self, stream: int) -> int:
        if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) or not 0 <= stream < self.streams:
            raise ValueError(f"stream = {stream!r}: must be an integer in [0, {self.streams})")
        return int(stream)

    @property
    def camera_shape(self) -> tuple[int, ...]:
        return (self.stack, *self.frame_shape)

    # ------------------------------------------------------------------------------------------------------
    # Adding

    def start_new_episode(self, stream: int | None = None) -> None:
        """Declare that the environment was reset although the last added step did not end its episode
        (after a resume, an environment error, ...). The next :meth:`add` then starts an episode. The last
        added transition stays valid and bootstraps from its stored ``next_obs``. ``stream``: the stream
        whose environment was reset; None: every stream."""
        if stream is None:
            self._open = [False] * self.streams
        else:
            self._open[self._check_stream(stream)] = False

    def add(
        self,
        obs: Mapping[str, Any],
        action: Any,
        reward: float,
        next_obs: Mapping[str, Any],
        terminated: bool,
        truncated: bool,
        stream: int = 0,
    ) -> None:
        """Add one environment step of ``stream``'s environment.

        ``obs`` must be the reset observation (camera = the first frame repeated) when the previous step
        ended its episode (or on the first call, or after :meth:`start_new_episode`), and otherwise the
        previous step's ``next_obs``. ``next_obs`` is what ``env.step`` returned, also when the step is
        truncated (the final observation, before the environment resets). These contracts are checked and
        a violation raises ValueError, because the buffer rebuilds stacks from single frames and would
        otherwise return observations that differ from what the agent saw.
        """
        stream = self._check_stream(stream)
        cam_shape = self.camera_shape
        cam = _as_array(obs["camera"], "obs['camera']", cam_shape, np.uint8)
        kin = _as_array(obs["kinematics"], "obs['kinematics']", (self.kinematics_dim,), np.float32)
        next_cam = _as_array(next_obs["camera"], "next_obs['camera']", cam_shape, np.uint8)
        next_kin = _as_array(next_obs["kinematics"], "next_obs['kinematics']", (self.kinematics_dim,), np.float32)
        act = _as_array(action, "action", (self.action_dim,), np.float32)
        reward = float(reward)
        if not (np.isfinite(reward) and np.isfinite(act).all() and np.isfinite(kin).all() and np.isfinite(next_kin).all()):
            raise ValueError(
                f"non-finite value in the step: reward={reward}, action={act}, "
                f"kinematics finite={np.isfinite(kin).all()}, next kinematics finite={np.isfinite(next_kin).all()}"
            )
        if self.stack > 1 and not np.array_equal(next_cam[:-1], cam[1:]):
            raise ValueError("next_obs['camera'][:-1] differs from obs['camera'][1:]: the camera is not a frame stack")

        if self._open[stream]:
            s = self._heads[stream]
            if not (np.array_equal(cam[-1], self.frames[s]) and np.array_equal(kin, self.kinematics[s])):
                raise ValueError(
                    "obs is not the previous step's next_obs; after an env.reset() that did not follow a "
                    "terminated/truncated step, call start_new_episode() first"
                )
        else:
            if self.stack > 1 and not (cam == cam[-1]).all():
                raise ValueError(
                    "obs starts an episode but its camera stack is not the reset frame repeated "
                    "(the buffer rebuilds episode starts that way)"
                )
            s = self._write_obs(cam[-1], kin, 0, stream)
            self._episodes_started += 1

        self.action[s] = act
        self.reward[s] = reward
        self.terminated[s] = bool(terminated)
        self.truncated[s] = bool(truncated)
        self._write_obs(next_cam[-1], next_kin, min(int(self.ep_pos[s]) + 1, self.stack - 1), stream)
        self.valid[s] = True
        self._n_valid += 1
        self._steps_added += 1
        self._open[stream] = not (terminated or truncated)

    def _write_obs(self, frame: np.ndarray, kin: np.ndarray, pos: int, stream: int) -> int:
        """Write an observation into ``stream``'s next slot, invalidating what depended on the overwritten one."""
        r, start = self.region, stream * self.region
        head = self._heads[stream]
        local = 0 if head < 0 else (head - start + 1) % r
        w = start + local
        if self.valid[w]:
            self.valid[w] = False
            self._n_valid -= 1
        for k in range(1, self.stack):
            u = start + (local + k) % r
            if self.valid[u] and self.ep_pos[u] >= k:
                self.valid[u] = False
                self._n_valid -= 1
        self.frames[w] = frame
        self.kinematics[w] = kin
        self.ep_pos[w] = pos
        self.valid[w] = False
        self._heads[stream] = w
        self._fills[stream] = min(self._fills[stream] + 1, r)
        return w

    def _draw(self, size: int) -> np.ndarray:
        """``size`` slots drawn uniformly from the written slots of all streams."""
        if self.streams == 1:
            return self._rng.integers(0, self._fills[0], size=size)
        fills = np.asarray(self._fills, np.int64)
        ends = np.cumsum(fills)
        k = self._rng.integers(0, int(ends[-1]), size=size)
        region = np.searchsorted(ends, k, side="right")
        return region * self.region + (k - (ends[region] - fills[region]))

    def _advance(self, slots: np.ndarray, k: np.ndarray | int) -> np.ndarray:
        """The slots ``k`` places after ``slots`` (negative: before) in their own stream's region."""
        local = slots % self.region
        return slots - local + (local + k) % self.region

    # ------------------------------------------------------------------------------------------------------
    # Sampling

    def sample_indices(self, n: int) -> np.ndarray:
        """``n`` slot indices drawn uniformly, with replacement, from the valid transitions (int64)."""
        if self._n_valid == 0:
            raise ValueError("cannot sample: the replay buffer holds no complete transition (len 0)")
        if n < 1:
            raise ValueError(f"batch size = {n}: must be >= 1")
        # Rejection sampling over the written slots: at least about half of them are valid (one final
        # observation per episode, at most stack - 1 wrap-around invalidations), so this is fast.
        idx = self._draw(n)
        bad = np.flatnonzero(~self.valid[idx])
        while bad.size:
            idx[bad] = self._draw(bad.size)
            bad = bad[~self.valid[idx[bad]]]
        return idx

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 0.99) -> dict[str, Any]:
        """A batch in the agent's format (NumPy arrays, B = ``batch_size``)::

            {"obs": {"camera": (B, stack, *frame) uint8, "kinematics": (B, K) float32},
             "action": (B, A) float32, "reward": (B,) float32,
             "next_obs": {...same as obs...}, "terminated": (B,) float32}

        With ``n_step > 1`` the transitions are n-step ones (see :meth:`gather`) and the batch also holds
        ``"discount"`` (B,) float32.
        """
        return self.gather(self.sample_indices(batch_size), n_step=n_step, gamma=gamma)

    def sample_many(self, k: int, batch_size: int, n_step: int = 1, gamma: float = 0.99) -> dict[str, Any]:
        """``k`` independent batches stacked on a leading axis (shapes ``(k, B, ...)``), for ``update_many``."""
        if k < 1:
            raise ValueError(f"k = {k}: must be >= 1")
        batch = self.gather(self.sample_indices(k * batch_size), n_step=n_step, gamma=gamma)
        return _map_arrays(lambda a: a.reshape(k, batch_size, *a.shape[1:]), batch)

    def gather(
        self, indices: np.ndarray, *, include_truncated: bool = False, n_step: int = 1, gamma: float = 0.99
    ) -> dict[str, Any]:
        """The transitions starting at slot ``indices`` (all must be valid), in :meth:`sample`'s format;
        ``include_truncated`` adds ``"truncated"`` (B,) float32 (the agent's batch has no such key).

        ``n_step > 1``: each transition runs on for up to ``n_step`` stored steps of its episode, stopping
        early at a terminated or truncated step or at the newest stored step: ``reward`` is the discounted sum
        ``r_0 + gamma r_1 + ... + gamma^(m-1) r_(m-1)`` of the m steps taken, ``next_obs`` the observation after
        them, ``terminated`` / ``truncated`` those of the last step, and ``"discount"`` = ``gamma^m``, the
        factor of the bootstrap (the agent's TD target uses it in place of ``gamma``).
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.capacity or not self.valid[idx].all()):
            raise ValueError("indices must name valid transitions (see valid_indices())")
        if n_step < 1:
            raise ValueError(f"n_step = {n_step}: must be >= 1")
        reward = np.take(self.reward, idx)
        last = idx  # slot of the last step taken
        if n_step > 1:
            reward = reward.astype(np.float64)
            discount = np.full(idx.shape, gamma, np.float64)
            going = ~(self.terminated[idx] | self.truncated[idx])
            for _ in range(1, n_step):
                nxt = self._advance(last, 1)
                going &= self.valid[nxt]  # the next observation starts a stored step of the same episode
                reward = reward + np.where(going, discount * self.reward[nxt], 0.0)
                discount = np.where(going, discount * gamma, discount)
                last = np.where(going, nxt, last)
                going &= ~(self.terminated[nxt] | self.truncated[nxt])
            reward = reward.astype(np.float32)
        nxt = self._advance(last, 1)
        batch = {
            "obs": {
                "camera": np.take(self.frames, self._stack_slots(idx), axis=0),
                "kinematics": np.take(self.kinematics, idx, axis=0),
            },
            "action": np.take(self.action, idx, axis=0),
            "reward": reward,
            "next_obs": {
                "camera": np.take(self.frames, self._stack_slots(nxt), axis=0),
                "kinematics": np.take(self.kinematics, nxt, axis=0),
            },
            "terminated": np.take(self.terminated, last).astype(np.float32),
        }
        if include_truncated:
            batch["truncated"] = np.take(self.truncated, last).astype(np.float32)
        if n_step > 1:
            batch["discount"] = discount.astype(np.float32)
        return batch

    def _stack_slots(self, slots: np.ndarray) -> np.ndarray:
        """(B, stack) slots of the frame stacks at ``slots``, oldest first: frame j (j = 0 newest) of the stack
        at slot t is slot t - min(j, ep_pos[t]) (module doc), so a stack never reaches into another episode."""
        back = np.arange(self.stack - 1, -1, -1)[None, :]
        return self._advance(slots[:, None], -np.minimum(back, self.ep_pos[slots][:, None]))

    def valid_indices(self) -> np.ndarray:
        """Slots where a sampleable transition starts (oldest-first order is not implied)."""
        return np.flatnonzero(self.valid)

    # ------------------------------------------------------------------------------------------------------
    # State: exact resume

    def _meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "capacity": self.capacity,
            "frame_shape": list(self.frame_shape),
            "stack": self.stack,
            "kinematics_dim": self.kinematics_dim,
            "action_dim": self.action_dim,
            "streams": self.streams,
            "heads": list(self._heads),
            "fills": list(self._fills),
            "episode_open": list(self._open),
            "filled": self._filled,
            "n_valid": self._n_valid,
            "steps_added": self._steps_added,
            "episodes_started": self._episodes_started,
            "rng_state": self._rng.bit_generator.state,
        }

    @staticmethod
    def _upgrade_meta(meta: Mapping[str, Any], source: str) -> dict[str, Any]:
        """Meta of any readable format version as version 2 (version 1: one stream)."""
        version = meta.get("format_version")
        if version == 1:
            return {**meta, "format_version": 2, "streams": 1, "heads": [meta["head"]], "fills": [meta["filled"]],
                    "episode_open": [meta["episode_open"]]}
        if version != FORMAT_VERSION:
            raise ValueError(f"{source}: replay format_version {version!r}, this code reads 1 and {FORMAT_VERSION}")
        return dict(meta)

    def _check_meta(self, meta: Mapping[str, Any], source: str) -> None:
        mine = self._meta()
        for key in ("capacity", "frame_shape", "stack", "kinematics_dim", "action_dim", "streams"):
            if list(np.atleast_1d(meta[key])) != list(np.atleast_1d(mine[key])):
                raise ValueError(
                    f"{source}: saved replay has {key} = {meta[key]}, this buffer has {mine[key]}; "
                    "build the buffer with the saved sizes"
                )
        heads, fills = list(meta["heads"]), list(meta["fills"])
        ok = len(heads) == len(fills) == len(meta["episode_open"]) == self.streams and all(
            0 <= f <= self.region and (h == -1 if f == 0 else i * self.region <= h < i * self.region + f)
            for i, (h, f) in enumerate(zip(heads, fills))
        )
        if not ok or meta["filled"] != _written_extent(fills, self.region):
            raise ValueError(f"{source}: corrupt replay state (heads={heads}, fills={fills}, filled={meta['filled']})")

    def _apply_meta(self, meta: Mapping[str, Any]) -> None:
        self._heads = [int(h) for h in meta["heads"]]
        self._fills = [int(f) for f in meta["fills"]]
        self._open = [bool(o) for o in meta["episode_open"]]
        self._n_valid = int(meta["n_valid"])
        self._steps_added = int(meta["steps_added"])
        self._episodes_started = int(meta["episodes_started"])
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = meta["rng_state"]
        self._rng = rng

    def _clear_unwritten(self) -> None:
        for i, f in enumerate(self._fills):
            end = self.capacity if i == self.streams - 1 else (i + 1) * self.region
            self.valid[i * self.region + f : end] = False
            self.ep_pos[i * self.region + f : end] = 0

    def state_dict(self) -> dict[str, Any]:
        """Copies of the written part of every array plus the counters and the sampling RNG state."""
        f = self._filled
        return {"meta": self._meta(), "arrays": {name: getattr(self, name)[:f].copy() for name in _ARRAY_NAMES}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output into this buffer (same sizes required)."""
        meta = self._upgrade_meta(state["meta"], "state")
        arrays = state["arrays"]
        self._check_meta(meta, "state")
        self._validate_arrays({k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in arrays.items()}, meta, "state")
        self._apply_meta(meta)
        for name in _ARRAY_NAMES:
            getattr(self, name)[: self._filled] = arrays[name]
        self._clear_unwritten()
        self._check_counts("state")

    def _validate_arrays(self, found: Mapping[str, tuple[tuple[int, ...], np.dtype]], meta: Mapping[str, Any], source: str):
        missing = [n for n in _ARRAY_NAMES if n not in found]
        if missing:
            raise ValueError(f"{source}: replay arrays missing: {', '.join(missing)}")
        for name in _ARRAY_NAMES:
            mine = getattr(self, name)
            shape, dtype = found[name]
            want = (int(meta["filled"]), *mine.shape[1:])
            if tuple(shape) != want or np.dtype(dtype) != mine.dtype:
                raise ValueError(
                    f"{source}: replay array {name!r} is {np.dtype(dtype).name}{tuple(shape)}, "
                    f"expected {mine.dtype.name}{want}"
                )

    def _check_counts(self, source: str) -> None:
        if int(self.valid.sum()) != self._n_valid:
            raise ValueError(f"{source}: corrupt replay state: {int(self.valid.sum())} valid flags, meta says {self._n_valid}")

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the buffer to ``directory`` (created; must not hold a saved buffer): ``meta.json`` and one
        ``.npy`` per array, only the written slots. Not atomic by itself: inside a checkpoint, orbax's
        temporary directory and rename make it so."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if (d / "meta.json").exists():
            raise FileExistsError(f"{d / 'meta.json'} exists: refusing to overwrite a saved replay buffer")
        f = self._filled
        for name in _ARRAY_NAMES:
            np.save(d / f"{name}.npy", getattr(self, name)[:f], allow_pickle=False)
        (d / "meta.json").write_text(json.dumps(self._meta()), encoding="utf-8")
        return d

    def load(self, directory: str | os.PathLike) -> None:
        """Load what :meth:`save` wrote into this buffer (same capacity and sizes), including the sampling
        RNG state, so future samples equal those of the saved buffer. Reads through memory maps: no
        second copy of the arrays is held."""
        d = Path(directory)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no saved replay buffer at {d} ({meta_path} missing)")
        meta = self._upgrade_meta(json.loads(meta_path.read_text(encoding="utf-8")), str(d))
        self._check_meta(meta, str(d))
        maps = {}
        for name in _ARRAY_NAMES:
            path = d / f"{name}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"replay array file {path} missing")
            maps[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        self._validate_arrays({k: (v.shape, v.dtype) for k, v in maps.items()}, meta, str(d))
        self._apply_meta(meta)
        for name, mm in maps.items():
            getattr(self, name)[: self._filled] = mm
        del maps
        self._clear_unwritten()
        self._check_counts(str(d))


def _written_extent(fills: list[int], region: int) -> int:
    """End of the last written slot of streams of ``region`` slots each that hold ``fills`` slots (0: empty)."""
    used = [i for i, f in enumerate(fills) if f]
    return used[-1] * region + fills[used[-1]] if used else 0


def _map_arrays(fn, tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _map_arrays(fn, v) for k, v in tree.items()}
    return fn(tree)


def required_gb(capacity: int, frame_shape=(84, 84), kinematics_dim: int = 0, action_dim: int = 2) -> float:
    """GB (1e9 bytes) a buffer of ``capacity`` slots allocates."""
    return capacity * bytes_per_slot(tuple(frame_shape), kinematics_dim, action_dim)["total"] / 1e9

