"""The compiled per-frame loops of the front camera (:class:`jtd3.backends.sim.render.FrontCamera`).

A frame is one gather from the town's mip pyramid per ground pixel and a few shaded boxes; as NumPy array code
the boxes alone were some fifty calls on arrays of a handful of elements. These loops compiled by numba do the
same arithmetic in the same order: the frames of 3,600 environment steps in three configurations were
bit-identical to the array code's (the dot products of NumPy's ``@`` could in principle round differently in
the last bit, an eighth of a pixel's rounding in rare cases). ``cache=True`` keeps the compiled code in
``__pycache__``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["SHIFT", "box_faces", "classes_at", "ground"]

SHIFT = 3  # cv2 sub-pixel bits for polygon and line vertices

# Box corners (unit half sizes, z from the ground up) and faces: four corner indices each.
LX = np.array([1, 1, -1, -1, 1, 1, -1, -1], dtype=np.float64)
LY = np.array([1, -1, -1, 1, 1, -1, -1, 1], dtype=np.float64)
LZ = np.array([0, 0, 0, 0, 2, 2, 2, 2], dtype=np.float64)
FACES = np.array([[0, 1, 5, 4], [2, 3, 7, 6], [1, 2, 6, 5], [3, 0, 4, 7], [4, 5, 6, 7]], dtype=np.int64)
_FIX = 1 << 24  # bound of cv2's fixed-point vertex coordinates


@numba.njit(cache=True, nogil=True)
def ground(img, x, y, c, s, gx, gy, ground_idx, scale, lvl_w, lvl_h, lvl_off, keep, fog_add, flat, x0, y0,
           building_grey):  # pragma: no cover - compiled
    """Write the ground pixels ``ground_idx`` of the flat frame ``img``: the texel under each pixel's ground
    point (vehicle frame ``gx``, ``gy``, turned by yaw (``c``, ``s``) and moved to ``x``, ``y``), faded to the
    horizon by ``keep`` / ``fog_add``; outside the raster the building grey."""
    for k in range(ground_idx.shape[0]):
        wx = x + gx[k] * c - gy[k] * s
        wy = y + gx[k] * s + gy[k] * c
        col = int((wx - x0) * scale[k])
        row = int((wy - y0) * scale[k])
        h, w = lvl_h[k], lvl_w[k]
        if col >= 0 and row >= 0 and col < w and row < h:
            val = flat[lvl_off[k] + row * w + col]
        else:
            val = building_grey
        img[ground_idx[k]] = np.uint8(val * keep[k] + fog_add[k])


@numba.njit(cache=True, nogil=True, error_model="numpy")  # x / 0 -> inf, as in NumPy
def box_faces(x, y, c, s, location, yaw, extent, cam, fwd, right, up, half_fov):  # pragma: no cover - compiled
    """The vehicles' boxes as the camera sees them, far to near (painter's order).

    ``cam`` = (camera x, camera z, focal length (px), width, height, render distance, near plane); the ego
    at ``x``, ``y`` with heading (``c``, ``s``); ``fwd``, ``right``, ``up``: the camera axes in the vehicle
    frame. Vehicles whose bounding circle lies outside the horizontal field of view (``half_fov``, rad), behind
    the camera or beyond the render distance are skipped. Returns, per drawn vehicle: its index, the five
    faces' camera-frame corners (m, 5, 4, 3), whether each face is visible (faces the camera), whether it
    crosses the near plane, and its corners in cv2 fixed point (m, 5, 4, 2) int32.
    """
    cam_x, cam_z, f, width, height, render_distance, near = cam
    n = location.shape[0]
    dist = np.empty(n)
    sel = np.empty(n, np.int64)
    m = 0
    cf, sf = math.cos(half_fov), math.sin(half_fov)
    for i in range(n):
        dx = location[i, 0] - x
        dy = location[i, 1] - y
        vx = dx * c + dy * s - cam_x  # vehicle frame relative to the camera (x forward, y right)
        vy = -dx * s + dy * c
        radius = math.hypot(extent[i, 0], extent[i, 1])
        dist[i] = math.hypot(vx, vy)
        # the bounding circle reaches into the horizontal field of view (distance to the wedge's side planes)
        if abs(vy) * cf - vx * sf < radius and dist[i] < render_distance and vx > -radius:
            sel[m] = i
            m += 1
    # far to near, ties in index order (a stable sort)
    order = np.empty(m, np.int64)
    for a in range(m):
        i = sel[a]
        b = a
        while b > 0 and dist[order[b - 1]] < dist[i]:
            order[b] = order[b - 1]
            b -= 1
        order[b] = i
    quads = np.empty((m, 5, 4, 3))
    visible = np.zeros((m, 5), np.bool_)
    clipped = np.zeros((m, 5), np.bool_)
    pts = np.empty((m, 5, 4, 2), np.int32)
    corners = np.empty((8, 3))
    for a in range(m):
        i = order[a]
        vyaw = math.radians(yaw[i])
        cy, sy = math.cos(vyaw), math.sin(vyaw)
        mean = np.zeros(3)
        for v in range(8):
            lx = LX[v] * extent[i, 0]
            ly = LY[v] * extent[i, 1]
            lz = LZ[v] * extent[i, 2] + location[i, 2]
            wx = location[i, 0] + lx * cy - ly * sy - x
            wy = location[i, 1] + lx * sy + ly * cy - y
            p = (wx * c + wy * s - cam_x, -wx * s + wy * c, lz - cam_z)
            corners[v, 0] = p[0] * fwd[0] + p[1] * fwd[1] + p[2] * fwd[2]
            corners[v, 1] = p[0] * right[0] + p[1] * right[1] + p[2] * right[2]
            corners[v, 2] = p[0] * up[0] + p[1] * up[1] + p[2] * up[2]
            for d in range(3):
                mean[d] += corners[v, d]
        for fi in range(5):
            centre = np.zeros(3)
            for j in range(4):
                for d in range(3):
                    quads[a, fi, j, d] = corners[FACES[fi, j], d]
                    centre[d] += corners[FACES[fi, j], d]
            dot = 0.0
            for d in range(3):
                dot += (centre[d] / 4.0 - mean[d] / 8.0) * (centre[d] / 4.0)
            visible[a, fi] = dot < 0
            for j in range(4):
                qx, qy, qz = quads[a, fi, j, 0], quads[a, fi, j, 1], quads[a, fi, j, 2]
                clipped[a, fi] = clipped[a, fi] or qx < near
                u = width / 2.0 + f * qy / qx - 0.5
                w = height / 2.0 - f * qz / qx - 0.5
                for d, val in ((0, u), (1, w)):
                    r = np.rint(val * (1 << SHIFT))  # cv2 fixed point
                    if math.isnan(r):
                        r = 0.0
                    pts[a, fi, j, d] = np.int32(min(max(r, -_FIX), _FIX))
    return order, quads, visible, clipped, pts


@numba.njit(cache=True, nogil=True)
def classes_at(classes, x0, y0, resolution, wx, wy, outside):  # pragma: no cover - compiled
    """The class map's values at world points (``outside`` beyond the raster)."""
    h, w = classes.shape
    out = np.empty(wx.shape[0], classes.dtype)
    for k in range(wx.shape[0]):
        col = int(math.floor((wx[k] - x0) / resolution))
        row = int(math.floor((wy[k] - y0) / resolution))
        out[k] = classes[row, col] if 0 <= col < w and 0 <= row < h else outside
    return out
