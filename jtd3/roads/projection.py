"""The compiled inner loop of :meth:`jtd3.roads.network.RoadNetwork.project_many`.

The simulator and the environment project a handful of points per tick; written as NumPy array code, that is
some forty calls on arrays of a few dozen elements, where each call's fixed overhead is the cost. This module does
the same arithmetic, in the same order, as one loop compiled by numba: after the KD-tree has given each point
its ``k`` nearest dense lane samples, test the chords (CARLA's lane segments) around each sample, keep the
nearest (among those heading within 90 degrees of ``yaw`` when a yaw is given), and interpolate the lane
centre there. Every operation is the IEEE double operation NumPy performs, so the results are bit-identical to
the array code it replaced.

:func:`nearest_on_polyline` is the same kind of loop for a route polyline (``RoutePolyline.locate``), and
:class:`SampleGrid` finds the nearest dense samples.

``cache=True`` keeps the compiled code beside this file (``__pycache__``), so only the first process after an
install compiles it (about a second).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["SampleGrid", "nearest_on_polyline", "project_chords"]

_CELL = 2.0  # metres: grid cell of the nearest-sample search (dense samples are 0.25 m apart)


class SampleGrid:
    """A uniform grid over the dense lane samples of some lane types, for :func:`nearest_samples`.

    ``ids`` are the samples' indices in the network's dense arrays, in cell order; ``starts`` the first entry
    of every cell (CSR, cell ``i * ny + j`` for column ``i`` and row ``j``). A KD-tree answers the same
    question, but ``scipy``'s costs about 50 us per call in argument handling, more than the whole projection.
    """

    def __init__(self, xy: np.ndarray, ids: np.ndarray, cell: float = _CELL) -> None:
        lo = xy.min(axis=0)
        ij = np.floor((xy - lo) / cell).astype(np.int64)
        nx, ny = (int(v) + 1 for v in ij.max(axis=0))
        key = ij[:, 0] * ny + ij[:, 1]
        order = np.argsort(key, kind="stable")
        self.size = len(ids)
        self.meta = np.array([lo[0], lo[1], cell])
        self.shape = np.array([nx, ny], dtype=np.int64)
        self.starts = np.searchsorted(key[order], np.arange(nx * ny + 1)).astype(np.int64)
        self.ids = np.ascontiguousarray(ids[order], dtype=np.int64)
        self.x = np.ascontiguousarray(xy[order, 0], dtype=np.float64)
        self.y = np.ascontiguousarray(xy[order, 1], dtype=np.float64)

    def nearest(self, xy: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` nearest samples of each point (N, k), nearest first (ties: lower sample index first)."""
        return nearest_samples(xy, k, self.meta, self.shape, self.starts, self.ids, self.x, self.y)


@numba.njit(cache=True, nogil=True)
def nearest_samples(xy, k, meta, shape, starts, ids, sx, sy):  # pragma: no cover - compiled
    """Exact k nearest neighbours on the grid: rings of cells around the point's cell, until the k-th nearest
    found is closer than anything outside the rings searched."""
    lox, loy, h = meta[0], meta[1], meta[2]
    nx, ny = shape[0], shape[1]
    n = xy.shape[0]
    out = np.empty((n, k), np.int64)
    best_d = np.empty(k)
    best_i = np.empty(k, np.int64)
    for p in range(n):
        px, py = xy[p, 0], xy[p, 1]
        cx = int(math.floor((px - lox) / h))
        cy = int(math.floor((py - loy) / h))
        r_max = max(abs(cx), abs(cx - (nx - 1)), abs(cy), abs(cy - (ny - 1)))
        count = 0
        r = 0
        while True:
            for x in range(max(cx - r, 0), min(cx + r, nx - 1) + 1):
                edge_x = x == cx - r or x == cx + r
                y = cy - r
                while y <= cy + r:
                    if 0 <= y < ny:
                        cell = x * ny + y
                        for e in range(starts[cell], starts[cell + 1]):
                            dx, dy = sx[e] - px, sy[e] - py
                            d2 = dx * dx + dy * dy
                            sid = ids[e]
                            if count == k and (d2 > best_d[k - 1] or (d2 == best_d[k - 1] and sid > best_i[k - 1])):
                                continue
                            # insertion into the sorted (distance, index) list
                            j = count if count < k else k - 1
                            while j > 0 and (best_d[j - 1] > d2 or (best_d[j - 1] == d2 and best_i[j - 1] > sid)):
                                best_d[j] = best_d[j - 1]
                                best_i[j] = best_i[j - 1]
                                j -= 1
                            best_d[j] = d2
                            best_i[j] = sid
                            if count < k:
                                count += 1
                    # inner columns of the ring: only its top and bottom cells
                    y = y + 1 if edge_x or y == cy + r else cy + r
            if r >= r_max:
                break
            # distance from the point to the outside of the cells searched so far
            gap = min(px - (lox + (cx - r) * h), lox + (cx + r + 1) * h - px,
                      py - (loy + (cy - r) * h), loy + (cy + r + 1) * h - py)
            if count == k and best_d[k - 1] < gap * gap:
                break
            r += 1
        for j in range(k):
            out[p, j] = best_i[j]
    return out


@numba.njit(cache=True, nogil=True)
def _wrap_deg(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


@numba.njit(cache=True, nogil=True)
def project_chords(xy, yaw, use_yaw, nn, chords, lanes, samples):  # pragma: no cover - compiled
    """Project points ``xy`` (N, 2) given their nearest dense samples ``nn`` (N, k).

    ``chords`` = (cand (samples, 3) chord indices around each sample, x, y, dx, dy, 1/|d|^2, |d|, lane, ta,
    tb, yaw (deg)); ``lanes`` = (forward, s0, s1, 1/sample step, last step index, first sample);
    ``samples`` = (x, y, yaw, width, dx, dy, dyaw, dwidth) per dense sample. With ``use_yaw``, chords heading
    more than 90 degrees away from ``yaw`` lose to a chord of matching heading whose distance is within half
    a lane width of the nearest. Returns lane index, s, centre x, y, yaw, width, lateral offset and distance.
    """
    cand, c_x, c_y, c_dx, c_dy, c_il2, c_len, c_lane, c_ta, c_tb, c_yaw = chords
    forward, s0, s1, inv_step, last_step, start = lanes
    sx, sy, syaw, swidth, sdx, sdy, sdyaw, sdw = samples
    n, k = nn.shape
    m = 3 * k
    out_lane = np.empty(n, np.int64)
    out = np.empty((7, n))
    d2 = np.empty(m)
    t = np.empty(m)
    ok = np.empty(m, np.bool_)
    for i in range(n):
        px, py = xy[i, 0], xy[i, 1]
        for j in range(k):
            for h in range(3):
                col = 3 * j + h
                c = cand[nn[i, j], h]
                dx, dy = c_dx[c], c_dy[c]
                rx = px - c_x[c]
                ry = py - c_y[c]
                tc = (rx * dx + ry * dy) * c_il2[c]
                tc = min(max(tc, 0.0), 1.0)
                ex = rx - tc * dx
                ey = ry - tc * dy
                t[col] = tc
                d2[col] = ex * ex + ey * ey
        if use_yaw:
            dmin = np.inf
            for col in range(m):
                dmin = min(dmin, math.sqrt(d2[col]))
            any_ok = False
            for col in range(m):
                c = cand[nn[i, col // 3], col % 3]
                wrong = abs(_wrap_deg(c_yaw[c] - yaw[i])) > 90.0
                ok[col] = (not wrong) and math.sqrt(d2[col]) <= dmin + 0.5 * swidth[nn[i, col // 3]]
                any_ok = any_ok or ok[col]
            if any_ok:
                for col in range(m):
                    if not ok[col]:
                        d2[col] = np.inf
        best = 0
        for col in range(1, m):
            if d2[col] < d2[best]:
                best = col
        cb = cand[nn[i, best // 3], best % 3]
        li = c_lane[cb]
        travel = min(c_ta[cb] + t[best] * c_len[cb], c_tb[cb])
        s = s0[li] + travel if forward[li] else s1[li] - travel
        # the dense samples of lane li at that travel distance
        f = max(travel, 0.0) * inv_step[li]
        i0 = min(int(f), last_step[li])
        u = min(f - i0, 1.0)
        a = start[li] + i0
        cx = sx[a] + u * sdx[a]
        cy = sy[a] + u * sdy[a]
        lane_yaw = _wrap_deg(syaw[a] + u * sdyaw[a])
        r = math.radians(lane_yaw)
        ox, oy = px - cx, py - cy
        out_lane[i] = li
        out[0, i] = s
        out[1, i] = cx
        out[2, i] = cy
        out[3, i] = lane_yaw
        out[4, i] = swidth[a] + u * sdw[a]
        out[5, i] = math.cos(r) * oy - math.sin(r) * ox
        out[6, i] = math.hypot(ox, oy)
    return out_lane, out


@numba.njit(cache=True, nogil=True)
def nearest_on_polyline(points, lo, hi, x, y):  # pragma: no cover - compiled
    """The point of segments ``lo .. hi - 1`` of the polyline ``points`` (N, 2) nearest to (x, y).

    Returns (segment index, parameter t in [0, 1], foot x, foot y, squared segment length, squared distance);
    the first segment wins a tie.
    """
    best, best_t, best_fx, best_fy, best_len2, best_d2 = -1, 0.0, 0.0, 0.0, 0.0, np.inf
    for i in range(lo, hi):
        dx = points[i + 1, 0] - points[i, 0]
        dy = points[i + 1, 1] - points[i, 1]
        len2 = max(dx * dx + dy * dy, 1e-18)
        t = ((x - points[i, 0]) * dx + (y - points[i, 1]) * dy) / len2
        t = min(max(t, 0.0), 1.0)
        fx = points[i, 0] + t * dx
        fy = points[i, 1] + t * dy
        d2 = (x - fx) * (x - fx) + (y - fy) * (y - fy)
        if d2 < best_d2:
            best, best_t, best_fx, best_fy, best_len2, best_d2 = i, t, fx, fy, len2, d2
    return best, best_t, best_fx, best_fy, best_len2, best_d2
