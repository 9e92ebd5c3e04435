"""Rasterised town and the two cameras (front perspective and bird's-eye), as pure functions of state.

The town is rasterised once (cv2 polygons and polylines from the road network) into a grey texture with a mip
pyramid and a class map (building / verge / sidewalk / shoulder / road). Cameras sample it:

- Front camera: an inverse perspective map precomputed per pixel (the ground point each pixel ray hits, in the
  vehicle frame, and the mip level matching the pixel's ground footprint). A frame is one rotation+translation
  of those points and one gather from the pyramid; the sky is a fixed gradient; ground fades to the horizon
  grey with distance. NPCs are drawn as shaded 3D boxes, far to near (painter's algorithm), after clipping to
  the near plane, so nearer vehicles occlude farther ones and every vehicle occludes the ground.
- Bird's-eye view: ego-centred, ego heading up, sampled from the pyramid level nearest the requested metres
  per pixel; vehicles are filled oriented rectangles, the route a polyline.

Both are deterministic functions of (town raster, ego pose, vehicles, route, camera settings), so the CARLA
backend can render the bird's-eye view with the same code. Frame: CARLA's (x east, y south, yaw clockwise).
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from jtd3.backends.base import Vehicles
from jtd3.backends.sim import render_kernels as kernels
from jtd3.backends.sim.config import CameraConfig, RenderConfig
from jtd3.roads.network import RoadNetwork

__all__ = [
    "BUILDING",
    "FrontCamera",
    "ROAD",
    "SHOULDER",
    "SIDEWALK",
    "TownRaster",
    "VERGE",
    "build_town_raster",
    "render_birdeye",
    "vehicle_grey",
]

# Class map values.
BUILDING, VERGE, SIDEWALK, SHOULDER, ROAD = 0, 1, 2, 3, 4
_SHIFT = kernels.SHIFT  # cv2 sub-pixel bits for polygon and line vertices
_MARGIN = 10.0  # metres of ground around the lanes' bounding box
_MIN_MIP = 16  # stop the pyramid when a side would go below this many pixels


@dataclasses.dataclass(frozen=True)
class TownRaster:
    """Grey texture (with mip pyramid) and class map of a town, in CARLA world coordinates."""

    x0: float  # world x of the left edge of column 0
    y0: float  # world y of the top edge of row 0
    resolution: float  # metres per pixel at level 0
    classes: np.ndarray  # (H, W) uint8, BUILDING..ROAD
    flat: np.ndarray  # all mip levels' grey values, concatenated (uint8)
    level_shape: np.ndarray  # (L, 2) int64 rows, cols per level
    level_offset: np.ndarray  # (L,) int64 offset of each level in `flat`
    building_grey: int

    @property
    def grey(self) -> np.ndarray:
        h, w = self.level_shape[0]
        return self.flat[: h * w].reshape(h, w)

    def level(self, k: int) -> np.ndarray:
        h, w = self.level_shape[k]
        o = self.level_offset[k]
        return self.flat[o : o + h * w].reshape(h, w)

    def sample(self, wx: np.ndarray, wy: np.ndarray, level: np.ndarray | int) -> np.ndarray:
        """Grey values at world points (nearest texel of the given mip level(s)); outside -> building grey."""
        level = np.asarray(level)
        scale = 1.0 / (self.resolution * (2.0 ** level))
        col = np.floor((wx - self.x0) * scale).astype(np.int64)
        row = np.floor((wy - self.y0) * scale).astype(np.int64)
        hw = self.level_shape[level]
        inside = (col >= 0) & (row >= 0) & (col < hw[..., 1]) & (row < hw[..., 0])
        idx = self.level_offset[level] + np.clip(row, 0, hw[..., 0] - 1) * hw[..., 1] + np.clip(col, 0, hw[..., 1] - 1)
        return np.where(inside, self.flat[idx], self.building_grey).astype(np.uint8)

    def class_at(self, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
        """Class (BUILDING..ROAD) at world points; outside the raster -> BUILDING."""
        return kernels.classes_at(self.classes, float(self.x0), float(self.y0), float(self.resolution),
                                  np.asarray(wx, dtype=np.float64).reshape(-1),
                                  np.asarray(wy, dtype=np.float64).reshape(-1), BUILDING).reshape(np.shape(wx))

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """World (N, 2) -> level-0 pixel coordinates (col, row) as floats."""
        return np.stack([(xy[:, 0] - self.x0) / self.resolution, (xy[:, 1] - self.y0) / self.resolution], axis=1)


def _edges(net: RoadNetwork, li: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Left and right lane edges (in travel order), arc length, centre and OpenDRIVE s."""
    xy, yaw, arc, s = net.lane_polyline(li)
    a, b = net._sample_start[li], net._sample_start[li + 1]
    half = 0.5 * net.sample_width[a:b]
    r = np.radians(yaw)
    right = np.stack([-np.sin(r), np.cos(r)], axis=1)
    return xy - right * half[:, None], xy + right * half[:, None], arc, xy, s


def _fix(pts: np.ndarray, raster_origin: tuple[float, float], res: float) -> np.ndarray:
    px = (pts - np.array(raster_origin)) / res
    return np.round(px * (1 << _SHIFT)).astype(np.int32)


def build_town_raster(net: RoadNetwork, cfg: RenderConfig) -> TownRaster:
    """Rasterise ``net`` (cached on the network per render settings)."""
    cache = net.__dict__.setdefault("_raster_cache", {})
    if cfg in cache:
        return cache[cfg]
    res = cfg.resolution
    x0, y0, x1, y1 = net.bounds(_MARGIN)
    w = int(math.ceil((x1 - x0) / res))
    h = int(math.ceil((y1 - y0) / res))
    origin = (x0, y0)
    lane_masks = {t: np.zeros((h, w), np.uint8) for t in ("driving", "shoulder", "sidewalk", "other")}
    for info in net.lanes:
        if info.length < 1e-6:
            continue
        left, right, _arc, _c, _s = _edges(net, info.index)
        poly = _fix(np.concatenate([left, right[::-1]]), origin, res)
        key = info.type if info.type in lane_masks else "other"
        cv2.fillPoly(lane_masks[key], [poly], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    road = lane_masks["driving"]
    # Junction interiors: close the small gaps between overlapping connecting lanes.
    k = max(int(round(2.5 / res)) | 1, 3)
    road = cv2.morphologyEx(road, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    any_lane = (road | lane_masks["shoulder"] | lane_masks["sidewalk"] | lane_masks["other"]).astype(np.uint8)
    dist = cv2.distanceTransform((1 - any_lane).astype(np.uint8), cv2.DIST_L2, 5) * res
    classes = np.full((h, w), BUILDING, np.uint8)
    classes[dist <= cfg.verge_width] = VERGE
    classes[lane_masks["other"] > 0] = SIDEWALK
    classes[lane_masks["sidewalk"] > 0] = SIDEWALK
    classes[lane_masks["shoulder"] > 0] = SHOULDER
    classes[road > 0] = ROAD
    lut = np.array([cfg.building, cfg.sidewalk, cfg.sidewalk, cfg.shoulder, cfg.asphalt], np.uint8)
    grey = lut[classes]
    _draw_markings(net, grey, origin, cfg)
    levels = [grey]
    while min(levels[-1].shape) // 2 >= _MIN_MIP and len(levels) < 10:
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    shapes = np.array([lv.shape for lv in levels], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int64)
    flat = np.concatenate([lv.reshape(-1) for lv in levels])
    raster = TownRaster(x0, y0, res, classes, flat, shapes, offsets, cfg.building)
    cache[cfg] = raster
    return raster


def _mark_grey(color: str, cfg: RenderConfig) -> int:
    """Yellow markings get their own grey; white, "standard" and other colours the white grey."""
    greys = {"yellow": cfg.marking_yellow, "white": cfg.marking_white}
    return greys.get(color, greys["white"])


def _draw_line(img: np.ndarray, pts: np.ndarray, origin, res: float, grey: int, width: float) -> None:
    if len(pts) < 2:
        return
    thick = max(int(round(width / res)), 1)
    cv2.polylines(img, [_fix(pts, origin, res)], False, int(grey), thickness=thick, lineType=cv2.LINE_AA, shift=_SHIFT)


def _draw_mark(img, pts, arc, mtype: str, color: str, width: float, origin, cfg: RenderConfig, normal=None) -> None:
    res = cfg.resolution
    width = max(width, 0.12)
    if mtype == "curb":
        _draw_line(img, pts, origin, res, cfg.curb, width)
        return
    grey = _mark_grey(color, cfg)
    parts = mtype.split()
    if len(parts) == 2 and normal is not None:  # double lines, 2 widths apart
        for sign, part in zip((-1.0, 1.0), parts):
            _draw_mark(img, pts + sign * width * normal, arc, part, color, width, origin, cfg)
        return
    if mtype == "solid":
        _draw_line(img, pts, origin, res, grey, width)
    elif mtype in ("broken", "botts dots"):
        period = cfg.dash_length + cfg.dash_gap
        on = np.mod(arc, period) < (cfg.dash_length if mtype == "broken" else 0.2)
        # split into runs of "on" samples
        edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            _draw_line(img, pts[a:b], origin, res, grey, width)


def _draw_markings(net: RoadNetwork, img: np.ndarray, origin, cfg: RenderConfig) -> None:
    """Each lane's own road mark on its outer edge; the centre lane's mark on the inner edge of lane -1 (or 1)."""
    for info in net.lanes:
        if info.length < 1e-6:
            continue
        sec = net._section(info)
        left, right, arc, _c, s = _edges(net, info.index)
        d = np.gradient(right, axis=0)
        n = np.stack([-d[:, 1], d[:, 0]], axis=1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
        jobs = [(sec.lanes[info.lane_id], right)]
        if info.lane_id == -1 or (info.lane_id == 1 and -1 not in sec.lanes):
            jobs.append((sec.lanes[0], left))
        for lane, edge in jobs:
            if not lane.marks:
                continue
            ds = s - sec.s
            starts = [m.s_offset for m in lane.marks]
            which = np.clip(np.searchsorted(starts, ds, side="right") - 1, 0, len(starts) - 1)
            for k, mark in enumerate(lane.marks):
                sel = which == k
                if not np.any(sel) or mark.type == "none":
                    continue
                idx = np.flatnonzero(sel)
                _draw_mark(img, edge[idx], arc[idx], mark.type, mark.color, mark.width, origin, cfg, n[idx])


def vehicle_grey(ids: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """Body grey level of each vehicle id (a fixed hash of the id, so it is stable across frames)."""
    h = (np.asarray(ids, dtype=np.int64) * 2654435761) % 1000003
    span = cfg.npc_grey_max - cfg.npc_grey_min
    return (cfg.npc_grey_min + (h % (span + 1))).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Front camera


class FrontCamera:
    """Precomputed inverse perspective map of a front camera; :meth:`render` draws one frame."""

    # Face shading factors: front/back, sides, top.
    _SHADE = {"x": 0.75, "y": 0.9, "z": 1.15}

    def __init__(self, cam: CameraConfig, cfg: RenderConfig, raster: TownRaster, width: int | None = None,
                 height: int | None = None) -> None:
        self.cam, self.cfg, self.raster = cam, cfg, raster
        W = int(width if width is not None else cam.width)
        H = int(height if height is not None else cam.height)
        self.W, self.H = W, H
        self.f = (W / 2.0) / math.tan(math.radians(cam.fov) / 2.0)
        p = math.radians(cam.pitch)
        self.fwd = np.array([math.cos(p), 0.0, math.sin(p)])
        self.up = np.array([-math.sin(p), 0.0, math.cos(p)])
        self.right = np.array([0.0, 1.0, 0.0])
        self.pos = np.array([cam.x, 0.0, cam.z])
        jj, ii = np.meshgrid(np.arange(W) + 0.5 - W / 2.0, np.arange(H) + 0.5 - H / 2.0)
        d = self.f * self.fwd[None, None] + jj[..., None] * self.right + (-ii)[..., None] * self.up
        dz = d[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(dz < 0, cam.z / -dz, np.inf)
        gx = cam.x + t * d[..., 0]
        gy = t * d[..., 1]
        ground_dist = np.hypot(gx - cam.x, gy)
        ground = np.isfinite(t) & (ground_dist < cam.render_distance)
        norm = np.linalg.norm(d, axis=-1)
        # Ground footprint of one pixel: range * (1 / f) / |sin(grazing angle)| along the view, range / f across.
        rng = t * norm
        sin_graze = np.clip(-dz / norm, 1e-3, 1.0)
        foot = np.sqrt((rng / self.f) * (rng / self.f / sin_graze))
        level = np.clip(np.floor(np.log2(np.maximum(foot / raster.resolution, 1.0))), 0, len(raster.level_shape) - 1)
        fog = np.clip(ground_dist / cam.render_distance, 0.0, 1.0) ** 2
        self._ground_idx = np.flatnonzero(ground.reshape(-1))
        g = self._ground_idx
        self._gx, self._gy = gx.reshape(-1)[g], gy.reshape(-1)[g]
        lv = level.reshape(-1)[g].astype(np.int64)
        self._scale = 1.0 / (raster.resolution * (2.0 ** lv))
        self._lvl_h = raster.level_shape[lv, 0]
        self._lvl_w = raster.level_shape[lv, 1]
        self._lvl_off = raster.level_offset[lv]
        self._fog = fog.reshape(-1)[g]
        self._fog_add = self._fog * cfg.horizon
        self._keep = 1.0 - self._fog
        # Sky: brighter towards the top; pixels looking down beyond render_distance show the horizon grey.
        elev = np.degrees(np.arcsin(np.clip(dz / norm, -1.0, 1.0)))  # ray elevation above the horizon
        sky = np.clip(cfg.sky + 0.6 * np.clip(elev, 0, 60), 0, 255)
        sky = np.where(dz < 0, cfg.horizon, sky)
        self._background = sky.astype(np.uint8).reshape(-1)

    def render(self, x: float, y: float, yaw: float, vehicles: Vehicles | None = None) -> np.ndarray:
        """Grey uint8 (H, W) frame for the ego at (x, y, yaw deg), with ``vehicles`` as boxes."""
        c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        r = self.raster
        img = self._background.copy()
        kernels.ground(img, float(x), float(y), c, s, self._gx, self._gy, self._ground_idx, self._scale,
                       self._lvl_w, self._lvl_h, self._lvl_off, self._keep, self._fog_add, r.flat, float(r.x0),
                       float(r.y0), int(r.building_grey))
        img = img.reshape(self.H, self.W)
        if vehicles is not None and len(vehicles):
            self._draw_boxes(img, x, y, yaw, vehicles)
        return img

    _FACE_AXIS = ("x", "x", "y", "y", "z")  # the shading axis of each face's normal (render_kernels.FACES)

    def _draw_boxes(self, img: np.ndarray, x: float, y: float, yaw: float, v: Vehicles) -> None:
        cam = self.cam
        c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        near = 0.05
        order, quads, visible, clipped, pts = kernels.box_faces(
            float(x), float(y), c, s, np.ascontiguousarray(v.location, dtype=np.float64),
            np.ascontiguousarray(v.yaw, dtype=np.float64), np.ascontiguousarray(v.extent, dtype=np.float64),
            (float(cam.x), float(self.pos[2]), float(self.f), float(self.W), float(self.H),
             float(cam.render_distance), near),
            self.fwd, self.right, self.up, math.atan2(self.W / 2.0, self.f) + 0.05)
        if order.size == 0:
            return
        face_shade = np.array([self._SHADE[axis] for axis in self._FACE_AXIS])
        greys = np.clip(vehicle_grey(v.ids[order], self.cfg)[:, None] * face_shade, 0, 255).astype(np.int64)
        for k, fi in zip(*np.nonzero(visible)):  # vehicle by vehicle, far to near
            g = int(greys[k, fi])
            if clipped[k, fi]:
                poly = _clip_near(quads[k, fi], near)
                if poly is None:
                    continue
                uu = self.W / 2.0 + self.f * poly[:, 1] / poly[:, 0] - 0.5
                vv = self.H / 2.0 - self.f * poly[:, 2] / poly[:, 0] - 0.5
                q = np.clip(np.round(np.stack([uu, vv], axis=1) * (1 << _SHIFT)), -(1 << 24), 1 << 24)
                cv2.fillConvexPoly(img, q.astype(np.int32), g, cv2.LINE_AA, _SHIFT)
            else:
                cv2.fillConvexPoly(img, pts[k, fi], g, cv2.LINE_AA, _SHIFT)


def _clip_near(poly: np.ndarray, near: float) -> np.ndarray | None:
    """Sutherland-Hodgman clip of a 3D polygon (camera frame, x forward) against x >= near."""
    inside = poly[:, 0] >= near
    if inside.all():
        return poly
    if not inside.any():
        return None
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ia, ib = a[0] >= near, b[0] >= near
        if ia:
            out.append(a)
        if ia != ib:
            t = (near - a[0]) / (b[0] - a[0])
            out.append(a + t * (b - a))
    return np.array(out) if len(out) >= 3 else None


# ----------------------------------------------------------------------------------------------------------
# Bird's-eye view


def _birdeye_grid(width: int, height: int, mpp: float, ahead: float) -> tuple[np.ndarray, np.ndarray]:
    """Vehicle-frame (forward, right) offsets of every pixel centre; ego at column W/2, row H/2 + ahead*H."""
    cols = (np.arange(width) + 0.5 - width / 2.0) * mpp
    rows = (height / 2.0 + ahead * height - (np.arange(height) + 0.5)) * mpp
    return np.meshgrid(rows, cols, indexing="ij")  # forward (H, W), right (H, W)


_GRID_CACHE: dict = {}


def render_birdeye(
    raster: TownRaster,
    ego: tuple[float, float, float],
    vehicles: Vehicles | None,
    route: np.ndarray | None,
    width: int,
    height: int,
    mpp: float,
    cfg: RenderConfig,
    ego_extent: tuple[float, float] = (2.4, 1.05),
    ahead: float = 0.25,
) -> np.ndarray:
    """Ego-centred, heading-up grey (height, width) uint8 view; pure function of its arguments.

    ``ego`` is (x, y, yaw_deg); ``route`` an optional (N, 2) world polyline; ``mpp`` metres per pixel; the ego sits
    ``ahead * height`` pixels below the image centre so more road ahead is visible.
    """
    key = (width, height, mpp, ahead)
    if key not in _GRID_CACHE:
        if len(_GRID_CACHE) > 16:
            _GRID_CACHE.clear()
        _GRID_CACHE[key] = _birdeye_grid(width, height, mpp, ahead)
    fwd, rgt = _GRID_CACHE[key]
    x, y, yaw = ego
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    wx = x + fwd * c - rgt * s
    wy = y + fwd * s + rgt * c
    level = int(np.clip(np.floor(np.log2(max(mpp / raster.resolution, 1.0))), 0, len(raster.level_shape) - 1))
    img = raster.sample(wx, wy, level).reshape(height, width)

    def to_px(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        dx, dy = px - x, py - y
        f = dx * c + dy * s
        r = -dx * s + dy * c
        col = width / 2.0 + r / mpp - 0.5
        row = height / 2.0 + ahead * height - f / mpp - 0.5
        return np.round(np.stack([col, row], axis=-1) * (1 << _SHIFT)).astype(np.int32)

    if route is not None and len(route) >= 2:
        route = np.asarray(route, dtype=np.float64)
        reach = (np.hypot(width, height) * mpp)
        near = np.hypot(route[:, 0] - x, route[:, 1] - y) < reach
        if near.any():
            idx = np.flatnonzero(near)
            seg = route[max(idx[0] - 1, 0) : idx[-1] + 2]
            thick = max(int(round(0.6 / mpp)), 1)
            cv2.polylines(img, [to_px(seg[:, 0], seg[:, 1])], False, int(cfg.route), thick, cv2.LINE_AA, _SHIFT)

    def box(cx, cy, byaw, ex, ey, grey):
        cb, sb = math.cos(math.radians(byaw)), math.sin(math.radians(byaw))
        lx = np.array([ex, ex, -ex, -ex])
        ly = np.array([ey, -ey, -ey, ey])
        cv2.fillConvexPoly(img, to_px(cx + lx * cb - ly * sb, cy + lx * sb + ly * cb), int(grey), cv2.LINE_AA, _SHIFT)

    if vehicles is not None and len(vehicles):
        reach = 0.75 * np.hypot(width, height) * mpp + 5.0
        near = np.flatnonzero(np.hypot(vehicles.location[:, 0] - x, vehicles.location[:, 1] - y) < reach)
        greys = vehicle_grey(vehicles.ids[near], cfg)
        for k, i in enumerate(near):
            box(vehicles.location[i, 0], vehicles.location[i, 1], vehicles.yaw[i], vehicles.extent[i, 0],
                vehicles.extent[i, 1], greys[k])
    box(x, y, yaw, ego_extent[0], ego_extent[1], cfg.ego)
    return img
