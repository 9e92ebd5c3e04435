"""Sensor-like events: collision (oriented boxes), lane invasion (CARLA's rule) and off-road (pure functions).

- Collision: separating-axis test between the ego's footprint and each vehicle's footprint (oriented rectangles
  in the ground plane); static obstacles are footprint sample points on the town raster's building class.
- Lane invasion, as CARLA's ``sensor.other.lane_invasion`` computes it: each corner of the ego's box is
  projected onto the nearest driving lane before and after the tick; where both projections lie on the same
  road and lane section outside junctions and the lane changed, the markings between the two lanes are crossed.
- Off-road: the ego centre is not inside any driving lane (CARLA's ``get_waypoint(project_to_road=False)``).
"""

from __future__ import annotations

import math

import numpy as np

from jtd3.roads.lanes import MARK_TYPES, ProjectionBatch
from jtd3.roads.network import RoadNetwork

__all__ = ["box_corners", "crossed_markings", "footprint_points", "obb_overlap", "relative_impulse"]


def box_corners(x: float, y: float, yaw: float, hl: float, hw: float) -> np.ndarray:
    """(4, 2) corners of a rectangle: front-left, front-right, rear-right, rear-left (CARLA frame)."""
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    # scalar arithmetic: four points are cheaper in Python floats than in NumPy calls (same IEEE results)
    return np.array([[x + lx * c - ly * s, y + lx * s + ly * c]
                     for lx, ly in ((hl, -hw), (hl, hw), (-hl, hw), (-hl, -hw))])


def footprint_points(x: float, y: float, yaw: float, hl: float, hw: float) -> np.ndarray:
    """(8, 2) corners and edge midpoints of a footprint (static-obstacle probes)."""
    c = box_corners(x, y, yaw, hl, hw)
    return np.concatenate([c, 0.5 * (c + c[[1, 2, 3, 0]])])


def obb_overlap(
    x: float, y: float, yaw: float, hl: float, hw: float,
    ox: np.ndarray, oy: np.ndarray, oyaw: np.ndarray, ohl: np.ndarray, ohw: np.ndarray,
) -> np.ndarray:
    """Boolean (N,): does the rectangle (x, y, yaw, half length, half width) overlap each other rectangle?"""
    ox = np.asarray(ox, dtype=np.float64)
    if ox.size == 0:
        return np.zeros(0, dtype=bool)
    a = math.radians(yaw)
    ua = np.array([math.cos(a), math.sin(a)])
    va = np.array([-math.sin(a), math.cos(a)])
    b = np.radians(oyaw)
    ub = np.stack([np.cos(b), np.sin(b)], axis=1)
    vb = np.stack([-np.sin(b), np.cos(b)], axis=1)
    d = np.stack([ox - x, np.asarray(oy) - y], axis=1)
    sep = np.zeros(len(ox), dtype=bool)
    # axes of the first box
    for axis, r_a in ((ua, hl), (va, hw)):
        r_b = ohl * np.abs(ub @ axis) + ohw * np.abs(vb @ axis)
        sep |= np.abs(d @ axis) > r_a + r_b
    # axes of the other boxes
    for axes, r_b in ((ub, ohl), (vb, ohw)):
        r_a = hl * np.abs(axes @ ua) + hw * np.abs(axes @ va)
        sep |= np.abs(np.einsum("nd,nd->n", d, axes)) > r_a + r_b
    return ~sep


def relative_impulse(v_ego: np.ndarray, v_other: np.ndarray, m_ego: float, m_other: float) -> float:
    """Normal impulse norm (N*s) of a perfectly plastic impact: reduced mass times the relative speed."""
    m = m_ego * m_other / (m_ego + m_other) if math.isfinite(m_other) else m_ego
    return float(m * np.linalg.norm(np.asarray(v_ego) - np.asarray(v_other)))


def _boundary_marks(net: RoadNetwork, lane_index: int, s: float, a: int, b: int) -> list[str]:
    """Marking types (carla.LaneMarkingType names) between lane ids ``a`` and ``b`` of one lane section."""
    info = net.lanes[lane_index]
    sec = net._section(info)
    ds = s - sec.s
    order = sorted(sec.lanes, reverse=True)  # left (positive) to right (negative), centre 0 included
    ia, ib = order.index(a), order.index(b)
    lo, hi = min(ia, ib), max(ia, ib)
    out = []
    for k in range(lo, hi):
        left_id, right_id = order[k], order[k + 1]
        if left_id == 0:
            continue  # lane 0 has no width: the centre line was counted at (1, 0)
        if right_id > 0:
            mark_lane = right_id  # between positive lanes: the inner lane's outer edge
        elif right_id == 0:
            mark_lane = 0  # the centre line
        else:
            mark_lane = left_id  # between negative lanes: the inner lane's outer edge
        m = sec.lanes[mark_lane].mark_at(ds)
        out.append(MARK_TYPES.get(m.type, "Other") if m is not None else "NONE")
    return out


def crossed_markings(net: RoadNetwork, before: np.ndarray, after: np.ndarray,
                     projection: ProjectionBatch | None = None) -> tuple[str, ...]:
    """Markings crossed by points moving from ``before`` (K, 2) to ``after`` (K, 2), by CARLA's rule.

    ``projection``: ``net.project_many`` of ``before`` then ``after`` (and possibly more points after them),
    when the caller has it already.
    """
    k = len(before)
    b = net.project_many(np.concatenate([before, after])) if projection is None else projection
    crossed: list[str] = []
    for i in range(k):
        l0, l1 = int(b.lane_index[i]), int(b.lane_index[k + i])
        if l0 == l1:
            continue
        i0, i1 = net.lanes[l0], net.lanes[l1]
        if (i0.road_id, i0.section_id) != (i1.road_id, i1.section_id) or i0.is_junction or i1.is_junction:
            continue
        for m in _boundary_marks(net, l1, float(b.s[k + i]), i0.lane_id, i1.lane_id):
            if m not in crossed:
                crossed.append(m)
    return tuple(crossed)
