"""Sensor data from CARLA's threads: per-sensor queues matched to the tick's frame number, and the conversions of
carla sensor data to NumPy / :mod:`jtd3.backends.base` values (no carla object leaves the backend)."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from jtd3.backends.base import CollisionEvent, LaneInvasionEvent
from jtd3.backends.carla.errors import CarlaSensorTimeout

__all__ = ["EventQueue", "FrameQueue", "bgra_to_gray", "collision_event", "lane_invasion_event", "vector3"]


class FrameQueue:
    """One item per frame (a camera, the world snapshot), matched to the tick's frame number.

    ``put`` runs on the carla callback thread. ``get(frame)`` returns the item of exactly that frame: older
    items (late, or duplicates of a frame already taken) are dropped and counted in ``stats['stale']``, newer
    ones are kept for their own tick (``stats['early']``); a repeated newer frame counts as ``'duplicate'``.
    """

    def __init__(self, name: str, frame_of: Callable[[Any], int] = lambda item: int(item.frame)):
        self.name = name
        self._frame_of = frame_of
        self._queue: queue.Queue = queue.Queue()
        self._ahead: dict[int, Any] = {}
        self.stats = {"stale": 0, "early": 0, "duplicate": 0}

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def get(self, frame: int, timeout_s: float) -> Any:
        if frame in self._ahead:
            item = self._ahead.pop(frame)
            self._drop_older(frame)
            return item
        deadline = time.monotonic() + timeout_s
        seen: list[int] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(remaining, 0.0)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                raise CarlaSensorTimeout(
                    f"{self.name}: no data for frame {frame} within {timeout_s:g} s (carla.sensor_timeout_s); "
                    f"frames received meanwhile: {seen[-10:]}"
                ) from None
            f = self._frame_of(item)
            seen.append(f)
            if f == frame:
                self._drop_older(frame)
                return item
            if f < frame:
                self.stats["stale"] += 1
            elif f in self._ahead:
                self.stats["duplicate"] += 1
            else:
                self.stats["early"] += 1
                self._ahead[f] = item

    def _drop_older(self, frame: int) -> None:
        for f in [f for f in self._ahead if f < frame]:
            del self._ahead[f]
            self.stats["stale"] += 1


class EventQueue:
    """Event sensors (collision, lane invasion): any number of items per frame, most frames none.

    ``take(frame)`` returns every item with ``item.frame <= frame`` received so far, oldest frame first;
    items of later frames wait for their own tick. Nothing is waited for: an event that arrives after its
    tick was collected comes out with the next ``take``.
    """

    def __init__(self, name: str, frame_of: Callable[[Any], int] = lambda item: int(item.frame)):
        self.name = name
        self._frame_of = frame_of
        self._queue: queue.Queue = queue.Queue()
        self._ahead: list[tuple[int, Any]] = []

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def take(self, frame: int) -> list[Any]:
        pending = self._ahead
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            pending.append((self._frame_of(item), item))
        ready = sorted((p for p in pending if p[0] <= frame), key=lambda p: p[0])  # stable: arrival order
        self._ahead = [p for p in pending if p[0] > frame]
        return [item for _, item in ready]


def bgra_to_gray(raw: Any, width: int, height: int, out_width: int, out_height: int) -> np.ndarray:
    """A CARLA camera buffer (BGRA, uint8, row-major ``height x width``) -> uint8 ``(out_height, out_width)``.

    BGRA -> gray with OpenCV's luma weights, then ``cv2.resize(..., INTER_AREA)`` (pixel-area averaging, the
    right filter for downscaling).
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size != width * height * 4:
        raise ValueError(f"camera buffer has {buf.size} bytes, expected {width}x{height}x4 = {width * height * 4}")
    gray = cv2.cvtColor(buf.reshape(height, width, 4), cv2.COLOR_BGRA2GRAY)
    if (width, height) == (out_width, out_height):
        return gray.copy()
    return cv2.resize(gray, (out_width, out_height), interpolation=cv2.INTER_AREA)


def vector3(v: Any) -> np.ndarray:
    """A ``carla.Vector3D`` (or Location) -> float64 ``(3,)``."""
    return np.array([v.x, v.y, v.z], dtype=np.float64)


def collision_event(event: Any) -> CollisionEvent:
    """A ``carla.CollisionEvent`` -> :class:`CollisionEvent` (static objects get ``other_id`` -1)."""
    other = event.other_actor
    other_type = str(other.type_id) if other is not None else "static.unknown"
    other_id = -1 if other is None or other_type.startswith("static.") else int(other.id)
    return CollisionEvent(
        frame=int(event.frame),
        other_id=other_id,
        other_type=other_type,
        intensity=float(np.linalg.norm(vector3(event.normal_impulse))),
    )


def lane_invasion_event(event: Any) -> LaneInvasionEvent:
    """A ``carla.LaneInvasionEvent`` -> :class:`LaneInvasionEvent` (the names of the crossed markings)."""
    names = tuple(str(getattr(m.type, "name", m.type)) for m in event.crossed_lane_markings)
    return LaneInvasionEvent(frame=int(event.frame), crossed_markings=names)
