"""The compiled per-tick arithmetic of the NPC traffic (:mod:`jtd3.backends.sim.traffic`).

Leaders, the geometric ego check, IDM and the advance, and the NPCs' poses run at every tick for every NPC. As
NumPy array code they were about a hundred calls on arrays of 20-100 elements, each call's fixed overhead the
real cost; here they are loops compiled by numba that perform the same IEEE double operations in the same
order (the rules themselves are documented in :mod:`jtd3.backends.sim.traffic`). ``cache=True`` keeps the
compiled code in ``__pycache__`` beside this file.

``graph`` is :attr:`LaneGraph.tables`: (length, successors (lanes, S) padded with -1, is-junction, speed cap,
largest curvature, first dense sample, sample count, sample step, sample x, sample y, sample yaw (deg),
lane-to-lane conflict matrix).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["PATH_STEP", "NO_GAP", "advance", "grant", "junction_requests", "pose", "pose_and_velocity"]

PATH_STEP = 2.0  # metres between path samples of the ego check
NO_GAP = 1e9
_MIN_SAFE = 0.3  # metres an NPC's advance always stays short of its leader


# Also in jtd3.roads.projection, on purpose: numba's on-disk cache of a kernel does not notice a change to a
# compiled helper it calls from another module, so sharing one would leave stale machine code after an edit.
@numba.njit(cache=True, nogil=True)
def _wrap_deg(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


@numba.njit(cache=True, nogil=True)
def _pose1(graph, lane: int, u: float) -> tuple[float, float, float]:
    """World x, y, yaw (deg) at arc length ``u`` on local lane ``lane``, clamped to the lane."""
    start, count, step, sx, sy, syaw = graph[5], graph[6], graph[7], graph[8], graph[9], graph[10]
    f = min(max(u / step[lane], 0.0), count[lane] - 1.0)
    i0 = min(int(f), count[lane] - 2)
    t = f - i0
    a = start[lane] + i0
    x = sx[a] + t * (sx[a + 1] - sx[a])
    y = sy[a] + t * (sy[a + 1] - sy[a])
    yaw = syaw[a] + t * _wrap_deg(syaw[a + 1] - syaw[a])
    return x, y, _wrap_deg(yaw)


@numba.njit(cache=True, nogil=True)
def pose(graph, lane, u):  # pragma: no cover - compiled
    """World x, y, yaw (deg) of NPCs at arc lengths ``u`` on local lanes ``lane`` (arrays (N,))."""
    n = lane.shape[0]
    x, y, yaw = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        x[i], y[i], yaw[i] = _pose1(graph, lane[i], u[i])
    return x, y, yaw


@numba.njit(cache=True, nogil=True)
def pose_and_velocity(graph, lane, u, v, vel_prev, dt):  # pragma: no cover - compiled
    """Poses (x, y, yaw deg), velocity vectors (N, 3) along the heading and accelerations (the change of
    velocity over ``dt``; zero when ``dt`` is 0) of NPCs at ``u`` on ``lane`` moving at speed ``v``."""
    x, y, yaw = pose(graph, lane, u)
    n = lane.shape[0]
    vel = np.zeros((n, 3))
    acc = np.zeros((n, 3))
    for i in range(n):
        r = math.radians(yaw[i])
        vel[i, 0] = v[i] * math.cos(r)
        vel[i, 1] = v[i] * math.sin(r)
        if dt:
            for d in range(3):
                acc[i, d] = (vel[i, d] - vel_prev[i, d]) / dt
    return x, y, yaw, vel, acc


@numba.njit(cache=True, nogil=True)
def _leaders(graph, lane, u, v, q, r, hold, ext_x):
    """Gap (m, bumper to bumper or stop line) and leader speed from the lane graph, before the ego."""
    length, succ, junction = graph[0], graph[1], graph[2]
    n, n_lanes = lane.shape[0], length.shape[0]
    gap = np.full(n, NO_GAP)
    lead_v = np.zeros(n)
    # the vehicle on the same lane with the next larger (u, index), and each lane's first such vehicle
    first = np.full(n_lanes + 1, -1, np.int64)  # slot n_lanes: "no lane" (-1)
    for i in range(n):
        nxt = -1
        for j in range(n):
            if j == i or lane[j] != lane[i]:
                continue
            if u[j] > u[i] or (u[j] == u[i] and j > i):
                if nxt < 0 or u[j] < u[nxt] or (u[j] == u[nxt] and j < nxt):
                    nxt = j
        if nxt >= 0:
            gap[i] = (u[nxt] - ext_x[nxt]) - (u[i] + ext_x[i])
            lead_v[i] = v[nxt]
        f = first[lane[i]]
        if f < 0 or u[i] < u[f] or (u[i] == u[f] and i < f):
            first[lane[i]] = i
    first_rear = np.full(n_lanes + 1, NO_GAP)
    for li in range(n_lanes):
        if first[li] >= 0:
            first_rear[li] = u[first[li]] - ext_x[first[li]]
    for i in range(n):
        p = lane[i]
        to_end = length[p] - (u[i] + ext_x[i])
        # the first vehicle on any successor of p (branches overlap near their start)
        best = -1
        for k in range(succ.shape[1]):
            sk = succ[p, k] if succ[p, k] >= 0 else n_lanes
            if best < 0 or first_rear[sk] < first_rear[best]:
                best = sk
        gb = to_end + first_rear[best]
        if gb < gap[i]:
            gap[i] = gb
            lead_v[i] = v[max(first[best], 0)]
        # the first vehicle on r, beyond q
        rr = r[i] if r[i] >= 0 else n_lanes
        lq = length[q[i]] if q[i] >= 0 else NO_GAP
        gc = to_end + lq + first_rear[rr]
        if gc < gap[i]:
            gap[i] = gc
            lead_v[i] = v[max(first[rr], 0)]
        # a stop line before a junction lane not held, and the end of a dead-end lane
        if q[i] >= 0 and junction[q[i]] and not junction[p] and hold[i] != q[i]:
            gs = to_end - 0.5
            if gs < gap[i]:
                gap[i] = gs
                lead_v[i] = 0.0
        if q[i] < 0:
            if to_end < gap[i]:
                gap[i] = to_end
            lead_v[i] = 0.0
    return gap, lead_v


@numba.njit(cache=True, nogil=True)
def _ego_gaps(graph, lane, u, q, r, x, y, yaw, extent, ego, lookahead, ego_margin):
    """Gap (m, bumper to the ego) and the ego's speed along the path for NPCs whose path meets the ego.

    Points every ``PATH_STEP`` metres along each nearby NPC's path (lanes p, q, r) are tested against the
    ego's box inflated by the NPC's half width and ``ego_margin``.
    """
    length = graph[0]
    n = lane.shape[0]
    gap = np.full(n, NO_GAP)
    lead = np.zeros(n)
    ex, ey, eyaw, espeed, ehl, ehw = ego
    c, s = math.cos(math.radians(eyaw)), math.sin(math.radians(eyaw))
    n_path = int(math.ceil(lookahead / PATH_STEP))
    for i in range(n):
        if not math.hypot(x[i] - ex, y[i] - ey) < lookahead + ehl + 5.0:
            continue
        lp = length[lane[i]]
        lq = length[q[i]] if q[i] >= 0 else 0.0
        for k in range(1, n_path + 1):
            d = PATH_STEP * k
            if not d > extent[i, 0]:
                continue
            a = u[i] + d
            if a < lp:
                li, ua = lane[i], a
            elif a - lp < lq and q[i] >= 0:
                li, ua = q[i], a - lp
            elif r[i] >= 0:
                li, ua = r[i], a - lp - lq
            else:
                continue
            px, py, _ = _pose1(graph, li, ua)
            dx, dy = px - ex, py - ey
            fx = dx * c + dy * s
            fy = -dx * s + dy * c
            if abs(fx) < ehl + ego_margin and abs(fy) < ehw + extent[i, 1] + ego_margin:
                gap[i] = max(d - extent[i, 0] - 0.5 * PATH_STEP, 0.0)
                lead[i] = max(espeed * math.cos(math.radians(eyaw) - math.radians(yaw[i])), 0.0)
                break
    return gap, lead


@numba.njit(cache=True, nogil=True)
def advance(graph, idm, dt, lane, u, v, q, r, hold, x, y, yaw, extent, ego):  # pragma: no cover - compiled
    """One IDM step of all NPCs: returns (new speed, advance along the path) per NPC.

    ``idm`` = (accel, decel, min gap, headway, max decel, (grip g)^2, 2 sqrt(accel decel), lookahead,
    ego margin); ``ego`` = (x, y, yaw deg, speed, half length, half width).
    """
    accel, decel, min_gap, headway, max_decel_cfg, a_grip_sq, ab, lookahead, ego_margin = idm
    length, v_cap, kappa = graph[0], graph[3], graph[4]
    ext_x = extent[:, 0].copy()
    gap, lead_v = _leaders(graph, lane, u, v, q, r, hold, ext_x)
    ge, ve = _ego_gaps(graph, lane, u, q, r, x, y, yaw, extent, ego, lookahead, ego_margin)
    n = lane.shape[0]
    v_new = np.empty(n)
    adv = np.empty(n)
    for i in range(n):
        if ge[i] < gap[i]:
            gap[i], lead_v[i] = ge[i], ve[i]
        p = lane[i]
        # desired speed: the lane's cap, lowered ahead of the next lane's cap
        v_cap_q = v_cap[q[i]] if q[i] >= 0 else 0.0
        v0 = min(v_cap[p], math.sqrt(v_cap_q * v_cap_q + 2.0 * decel * max(length[p] - u[i], 0.0)))
        v0 = max(v0, 0.5)
        vi = v[i]
        s_star = min_gap + max(vi * headway + vi * (vi - lead_v[i]) / ab, 0.0)
        ratio = vi / v0
        ratio2 = ratio * ratio
        gap_ratio = s_star / max(gap[i], 0.05)
        acc = accel * (1.0 - ratio2 * ratio2 - gap_ratio * gap_ratio)
        # friction circle: braking gets what the curve's lateral acceleration leaves of grip * g
        a_lat = vi * vi * kappa[p]
        max_decel = min(max_decel_cfg, math.sqrt(max(a_grip_sq - a_lat * a_lat, 0.0)))
        acc = min(max(acc, -max_decel), accel)
        vn = max(vi + acc * dt, 0.0)
        step = vn * dt
        limit = max(gap[i] - _MIN_SAFE, 0.0)
        if step > limit:  # never into the leader
            step = limit
            vn = step / dt
        v_new[i] = vn
        adv[i] = step
    return v_new, adv


@numba.njit(cache=True, nogil=True)
def junction_requests(graph, lane, u, q, hold, ext_x, approach):  # pragma: no cover - compiled
    """NPCs that request their next lane ``q``, a junction lane they do not hold, nearest the stop line first.

    Only the front-most vehicle of a lane requests (a follower's grant would block its own leader), and only
    within ``approach`` metres of the lane's end (its front bumper).
    """
    length, junction = graph[0], graph[2]
    n = lane.shape[0]
    front_u = np.full(length.shape[0], -np.inf)
    for i in range(n):
        front_u[lane[i]] = max(front_u[lane[i]], u[i])
    cands = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        p = lane[i]
        if (q[i] >= 0 and not junction[p] and junction[q[i]] and hold[i] != q[i]
                and (length[p] - u[i] - ext_x[i]) < approach and u[i] >= front_u[p]):
            # insertion by distance to the lane's end, ties in index order (a stable sort)
            key = length[p] - u[i]
            b = m
            while b > 0 and length[lane[cands[b - 1]]] - u[cands[b - 1]] > key:
                cands[b] = cands[b - 1]
                b -= 1
            cands[b] = i
            m += 1
    return cands[:m]


@numba.njit(cache=True, nogil=True)
def grant(graph, cands, lane, u, q, r, hold, ext_x, ego_path, yield_distance, min_gap):  # pragma: no cover
    """Grant junction lanes to the requesting NPCs ``cands`` in order; writes ``hold``.

    A request is refused while another NPC holds a conflicting lane, while a point of ``ego_path`` is within
    ``yield_distance`` of the junction lane's dense samples, when the exit lane ``r`` has no room for the NPC
    (its first rear within 2 half lengths + ``min_gap``), or when another holder is bound for the same exit
    from a different junction lane.
    """
    length, start, count, sx, sy, conflict = graph[0], graph[5], graph[6], graph[8], graph[9], graph[11]
    n = lane.shape[0]
    first_rear = np.full(length.shape[0] + 1, NO_GAP)  # exit room: the first rear on every lane
    for i in range(n):
        first_rear[lane[i]] = min(first_rear[lane[i]], u[i] - ext_x[i])
    for i in cands:
        qi = q[i]
        blocked = False
        for j in range(n):
            if hold[j] >= 0 and hold[j] != qi and conflict[qi, hold[j]]:
                blocked = True
                break
        if blocked:
            continue
        # yield to the ego when it is in, or about to enter, the junction lane's area
        d2 = np.inf
        for k in range(ego_path.shape[0]):
            for e in range(start[qi], start[qi] + count[qi]):
                dx, dy = ego_path[k, 0] - sx[e], ego_path[k, 1] - sy[e]
                d2 = min(d2, dx * dx + dy * dy)
        if math.sqrt(d2) < yield_distance:
            continue
        exit_lane = r[i]
        if exit_lane >= 0:
            if first_rear[exit_lane] < 2.0 * ext_x[i] + min_gap:
                continue
            for j in range(n):  # another holder bound for the same exit from a different junction lane
                if hold[j] >= 0 and (q[j] == exit_lane or lane[j] == exit_lane) and hold[j] != qi \
                        and lane[j] != exit_lane:
                    blocked = True
                    break
            if blocked:
                continue
        hold[i] = qi
