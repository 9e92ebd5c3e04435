"""Pictures for people (``DrivingEnv.render``): the newest camera frame next to a bird's-eye view.

The bird's-eye view is drawn from the road network and the ground truth, so it looks the same on both
backends: driving lanes grey, the route blue, the next route waypoints of the observation yellow (the first one
larger), NPC vehicles red, the ego green; ego-centred, heading up. Frame: CARLA's (x east, y south, yaw
clockwise seen from above); image rows grow downwards, the vehicle's right is the image's right.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from jtd3.backends.base import ActorState, Vehicles
from jtd3.backends.sim.events import box_corners
from jtd3.roads.network import RoadNetwork

__all__ = ["LaneDrawing", "birdeye_rgb", "compose"]

_SHIFT = 3  # cv2 sub-pixel bits


class LaneDrawing:
    """Driving-lane centre lines and widths of a network, gathered once for drawing."""

    def __init__(self, net: RoadNetwork) -> None:
        self.polylines: list[np.ndarray] = []
        self.widths: list[float] = []
        for li in net.driving_lanes():
            xy = net.lane_polyline(li)[0]
            if len(xy) >= 2:
                self.polylines.append(np.asarray(xy, dtype=np.float64))
                self.widths.append(float(net.project(*xy[len(xy) // 2]).lane_width))
        self.centres = np.array([p.mean(axis=0) for p in self.polylines]).reshape(-1, 2)
        self.radii = np.array([np.max(np.hypot(*(p - p.mean(axis=0)).T)) for p in self.polylines])


def birdeye_rgb(
    lanes: LaneDrawing,
    ego: ActorState,
    vehicles: Vehicles,
    route_xy: np.ndarray,
    waypoints_xy: np.ndarray,
    size: int = 256,
    mpp: float = 0.3,
) -> np.ndarray:
    """(size, size, 3) uint8 RGB ego-centred heading-up view at ``mpp`` metres per pixel (ego at 3/4 height)."""
    x, y, yaw = float(ego.location[0]), float(ego.location[1]), ego.yaw
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cx, cy = size / 2.0, size * 0.75

    def px(xy: np.ndarray) -> np.ndarray:
        d = np.asarray(xy, dtype=np.float64).reshape(-1, 2) - (x, y)
        f = d[:, 0] * c + d[:, 1] * s
        r = -d[:, 0] * s + d[:, 1] * c
        return np.round(np.stack([cx + r / mpp, cy - f / mpp], axis=1) * (1 << _SHIFT)).astype(np.int32)

    img = np.full((size, size, 3), (70, 90, 60), np.uint8)
    reach = size * mpp * 1.2
    near = np.hypot(lanes.centres[:, 0] - x, lanes.centres[:, 1] - y) < reach + lanes.radii
    for i in np.flatnonzero(near):
        thick = max(int(round(lanes.widths[i] / mpp)), 1)
        cv2.polylines(img, [px(lanes.polylines[i])], False, (105, 105, 105), thick, cv2.LINE_AA, _SHIFT)
    if len(route_xy) >= 2:
        cv2.polylines(img, [px(route_xy)], False, (40, 110, 255), max(int(round(0.5 / mpp)), 1), cv2.LINE_AA, _SHIFT)
    for k, p in enumerate(px(waypoints_xy)):
        cv2.circle(img, (int(p[0]), int(p[1])), (4 if k == 0 else 2) << _SHIFT, (255, 220, 0), -1, cv2.LINE_AA, _SHIFT)
    for i in range(len(vehicles)):
        loc, ext = vehicles.location[i], vehicles.extent[i]
        cv2.fillConvexPoly(img, px(box_corners(loc[0], loc[1], vehicles.yaw[i], ext[0], ext[1])), (220, 50, 50),
                           cv2.LINE_AA, _SHIFT)
    cv2.fillConvexPoly(img, px(box_corners(x, y, yaw, ego.extent[0], ego.extent[1])), (40, 210, 60), cv2.LINE_AA, _SHIFT)
    return img


def compose(camera: np.ndarray, birdeye: np.ndarray, lines: list[str]) -> np.ndarray:
    """Camera frame (H, W) grey, enlarged to the bird's-eye height, beside it; ``lines`` of text underneath."""
    h = birdeye.shape[0]
    cam = cv2.resize(camera, (int(round(camera.shape[1] * h / camera.shape[0])), h), interpolation=cv2.INTER_NEAREST)
    top = np.concatenate([cv2.cvtColor(cam, cv2.COLOR_GRAY2RGB), birdeye], axis=1)
    text = np.zeros((14 * len(lines) + 6, top.shape[1], 3), np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(text, line, (4, 14 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (230, 230, 230), 1, cv2.LINE_AA)
    return np.concatenate([top, text], axis=0)
