"""NPC traffic: vectorised lane following with IDM car following and junction reservations.

Every NPC lives on the driving-lane graph: a current lane ``p`` and arc length ``u`` along it (travel
direction), plus the next two lanes of its path (``q``, ``r``), chosen at random among the successors when the
NPC enters a lane. Each step:

1. Leaders: the nearest vehicle ahead on the same lane, the first vehicle on *any* successor of ``p`` (branches
   overlap near their start), the first vehicle on ``r`` beyond ``q``; a stop line at the end of ``p`` while the
   junction lane ``q`` is not reserved; and the ego, found geometrically: points sampled along the NPC's path
   ahead are tested against the ego's box (inflated by the NPC's half width and ``ego_margin``), so NPCs stop
   behind the ego wherever it is, even across lanes.
2. IDM acceleration towards the desired speed: the lane's speed limit times ``speed_factor``, capped in curves
   to sqrt(max_lateral_accel / curvature), and slowed in advance for the next lane's cap. Braking is limited by
   the tyres' friction circle (``grip``): in a curve, sqrt((grip g)^2 - a_lat^2). The advance is clamped so
   that no NPC moves into its leader (the one place an NPC may stop harder than its tyres allow).
3. Junctions: lanes of one junction that come closer than ``conflict_distance`` conflict. An NPC within
   ``junction_approach`` of a junction requests its junction lane; it is granted when no other NPC holds a
   conflicting lane and the exit lane has room (no blocking the box). A hold is released when the NPC's rear
   has left the junction. Same-lane followers share a hold (IDM keeps them apart). NPCs also yield to the ego:
   no grant while the ego, or where it will be within ``ego_yield_time`` seconds at its current velocity, is
   near the junction lane.

Deterministic for a seed. Frame: CARLA's.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from jtd3.backends.base import Vehicles
from jtd3.backends.sim.config import NpcConfig
from jtd3.roads.network import RoadNetwork

__all__ = ["LaneGraph", "Traffic"]

_PATH_STEP = 2.0  # metres between path samples of the ego check
_NO_GAP = 1e9
_MIN_SAFE = 0.3  # metres an NPC's advance always stays short of its leader


class LaneGraph:
    """Driving lanes of a network as arrays (built once per network and NPC settings, cached on the network)."""

    def __init__(self, net: RoadNetwork, cfg: NpcConfig) -> None:
        self.net = net
        lanes = net.driving_lanes()
        self.lanes = np.array(lanes, dtype=np.int64)  # local index -> network lane index
        local = {g: i for i, g in enumerate(lanes)}
        n = len(lanes)
        self.length = np.array([net.lanes[g].length for g in lanes])
        self.junction = np.array([net.lanes[g].is_junction for g in lanes])
        succ = [[local[s] for s in net.successors(g) if s in local] for g in lanes]
        self.n_succ = np.array([len(s) for s in succ], dtype=np.int64)
        width = max(int(self.n_succ.max()), 1)
        self.succ = np.full((n, width), -1, dtype=np.int64)
        for i, s in enumerate(succ):
            self.succ[i, : len(s)] = s
        self.start = net._sample_start[self.lanes]
        self.count = net._sample_start[self.lanes + 1] - self.start
        self.step = net._sample_step[self.lanes]
        # speed caps
        default = cfg.default_speed_limit / 3.6
        limit = np.array([net.speed_limit(g) or default for g in lanes]) * cfg.speed_factor
        kappa = np.zeros(n)
        for i, g in enumerate(lanes):
            _xy, yaw, arc, _s = net.lane_polyline(g)
            if len(arc) > 2 and arc[-1] > 0:
                dyaw = np.abs((np.diff(yaw) + 180.0) % 360.0 - 180.0)
                # curvature over ~2 m windows
                w = max(int(round(2.0 / max(self.step[i], 1e-6))), 1)
                cum = np.concatenate([[0.0], np.cumsum(np.radians(dyaw))])
                if len(cum) > w:
                    kappa[i] = np.max((cum[w:] - cum[:-w]) / (w * self.step[i]))
        self.kappa = kappa  # largest curvature of each lane (1/m)
        self.v_cap = np.minimum(limit, np.sqrt(cfg.max_lateral_accel / np.maximum(kappa, 1e-6)))
        # conflicts between lanes of the same junction
        self.conflict = np.zeros((n, n), dtype=bool)
        by_junction: dict[int, list[int]] = {}
        for i, g in enumerate(lanes):
            j = net.lanes[g].junction_id
            if j >= 0:
                by_junction.setdefault(j, []).append(i)
        self.trees: dict[int, cKDTree] = {}
        for members in by_junction.values():
            trees = {i: cKDTree(net.lane_polyline(lanes[i])[0]) for i in members}
            self.trees.update(trees)
            for a in members:
                for b in members:
                    if a < b:
                        d, _ = trees[a].query(net.lane_polyline(lanes[b])[0], k=1)
                        if np.min(d) < cfg.conflict_distance:
                            self.conflict[a, b] = self.conflict[b, a] = True
        self.spawnable = np.flatnonzero(~self.junction & (self.length > 15.0))
        if self.spawnable.size == 0:
            raise ValueError("the map has no driving lane outside junctions longer than 15 m to spawn NPCs on")

    @classmethod
    def for_network(cls, net: RoadNetwork, cfg: NpcConfig) -> "LaneGraph":
        cache = net.__dict__.setdefault("_lane_graph_cache", {})
        if cfg not in cache:
            cache[cfg] = cls(net, cfg)
        return cache[cfg]

    def pose(self, lane: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, yaw (deg) at arc length ``u`` on local lanes ``lane`` (vectorised, clamped to the lane)."""
        net = self.net
        f = np.clip(u / self.step[lane], 0.0, self.count[lane] - 1.0)
        i0 = np.minimum(f.astype(np.int64), self.count[lane] - 2)
        t = f - i0
        a = self.start[lane] + i0
        p0 = net.sample_xy[a]
        p1 = net.sample_xy[a + 1]
        xy = p0 + t[:, None] * (p1 - p0)
        y0 = net.sample_yaw[a]
        yaw = y0 + t * ((net.sample_yaw[a + 1] - y0 + 180.0) % 360.0 - 180.0)
        return xy[:, 0], xy[:, 1], (yaw + 180.0) % 360.0 - 180.0


class Traffic:
    """The NPCs of one episode. ``reset`` spawns them; ``step`` advances them by ``dt``."""

    def __init__(self, net: RoadNetwork, cfg: NpcConfig) -> None:
        self.cfg = cfg
        self.g = LaneGraph.for_network(net, cfg)
        self._empty()

    def _empty(self) -> None:
        self.n = 0
        self.ids = np.zeros(0, np.int64)
        self.lane = np.zeros(0, np.int64)
        self.u = np.zeros(0)
        self.v = np.zeros(0)
        self.q = np.zeros(0, np.int64)
        self.r = np.zeros(0, np.int64)
        self.hold = np.zeros(0, np.int64)  # junction lane held, -1 for none
        self.extent = np.zeros((0, 3))
        self.type_ids: list[str] = []
        self.x = np.zeros(0)
        self.y = np.zeros(0)
        self.yaw = np.zeros(0)
        self.vel = np.zeros((0, 3))
        self.acc = np.zeros((0, 3))

    # ------------------------------------------------------------------------------------------------------

    def _choose(self, lane: int) -> int:
        k = int(self.g.n_succ[lane])
        if k == 0:
            return -1
        return int(self.g.succ[lane, int(self.rng.integers(k))])

    def reset(self, n: int, ego_xy: tuple[float, float], rng: np.random.Generator, first_id: int) -> None:
        """Spawn ``n`` NPCs on random driving lanes outside junctions, ``spawn_min_distance`` from the ego."""
        if n < 0:
            raise ValueError(f"num_vehicles must be >= 0, got {n}")
        self._empty()
        self.rng = rng
        cfg, g = self.cfg, self.g
        if n == 0:
            return
        weights = g.length[g.spawnable] / g.length[g.spawnable].sum()
        lanes, us, exts, types = [], [], [], []
        placed_xy = []
        attempts = 0
        while len(lanes) < n:
            attempts += 1
            if attempts > 200 * n + 1000:
                raise ValueError(
                    f"could not place {n} NPCs (placed {len(lanes)}): the town is too small for this count with "
                    f"npc.spawn_min_gap={cfg.spawn_min_gap} and npc.spawn_min_distance={cfg.spawn_min_distance}"
                )
            k = len(lanes) % len(cfg.blueprints)
            ext = np.array(cfg.extents[k], dtype=np.float64)
            lane = int(g.spawnable[int(rng.choice(len(weights), p=weights))])
            L = g.length[lane]
            if L < 2 * ext[0] + 2.0:
                continue
            u = float(rng.uniform(ext[0] + 1.0, L - ext[0] - 1.0))
            x, y, _ = g.pose(np.array([lane]), np.array([u]))
            if math.hypot(x[0] - ego_xy[0], y[0] - ego_xy[1]) < cfg.spawn_min_distance:
                continue
            ok = True
            for (px, py), pl, pu in zip(placed_xy, lanes, us):
                d = math.hypot(px - x[0], py - y[0])
                if (pl == lane and abs(pu - u) < cfg.spawn_min_gap) or d < cfg.spawn_min_gap * 0.5:
                    ok = False
                    break
            if not ok:
                continue
            lanes.append(lane)
            us.append(u)
            exts.append(ext)
            types.append(cfg.blueprints[k])
            placed_xy.append((x[0], y[0]))
        self.n = n
        self.ids = first_id + np.arange(n, dtype=np.int64)
        self.lane = np.array(lanes, dtype=np.int64)
        self.u = np.array(us)
        self.v = np.zeros(n)
        self.q = np.array([self._choose(int(p)) for p in self.lane], dtype=np.int64)
        self.r = np.array([self._choose(int(q)) if q >= 0 else -1 for q in self.q], dtype=np.int64)
        self.hold = np.full(n, -1, dtype=np.int64)
        self.extent = np.array(exts)
        self.type_ids = types
        self._update_pose()

    def place(self, lanes: list[int], us: list[float], rng: np.random.Generator, first_id: int,
              speeds: list[float] | None = None) -> None:
        """Put NPCs at given (network lane index, arc length along travel) positions: constructed scenarios."""
        g = self.g
        local = {int(gl): i for i, gl in enumerate(g.lanes)}
        for li in lanes:
            if int(li) not in local:
                raise ValueError(f"lane {li} is not a driving lane of the network")
        self._empty()
        self.rng = rng
        n = len(lanes)
        self.n = n
        self.ids = first_id + np.arange(n, dtype=np.int64)
        self.lane = np.array([local[int(li)] for li in lanes], dtype=np.int64)
        self.u = np.array(us, dtype=np.float64)
        self.v = np.zeros(n) if speeds is None else np.array(speeds, dtype=np.float64)
        self.q = np.array([self._choose(int(p)) for p in self.lane], dtype=np.int64)
        self.r = np.array([self._choose(int(q)) if q >= 0 else -1 for q in self.q], dtype=np.int64)
        self.hold = np.full(n, -1, dtype=np.int64)
        k = np.arange(n) % len(self.cfg.blueprints)
        self.extent = np.array([self.cfg.extents[i] for i in k], dtype=np.float64).reshape(n, 3)
        self.type_ids = [self.cfg.blueprints[i] for i in k]
        self.vel = np.zeros((n, 3))
        self._update_pose()

    def _update_pose(self, dt: float | None = None) -> None:
        x, y, yaw = self.g.pose(self.lane, self.u)
        r = np.radians(yaw)
        vel = np.stack([self.v * np.cos(r), self.v * np.sin(r), np.zeros(self.n)], axis=1)
        self.acc = (vel - self.vel) / dt if dt else np.zeros((self.n, 3))
        self.x, self.y, self.yaw, self.vel = x, y, yaw, vel

    def vehicles(self) -> Vehicles:
        loc = np.stack([self.x, self.y, np.zeros(self.n)], axis=1)
        return Vehicles(ids=self.ids.copy(), location=loc, yaw=self.yaw.copy(), velocity=self.vel.copy(),
                        extent=self.extent.copy())

    # ------------------------------------------------------------------------------------------------------

    def step(self, dt: float, ego: tuple[float, float, float, float, float, float]) -> None:
        """Advance by ``dt``. ``ego`` = (x, y, yaw_deg, speed, half_length, half_width)."""
        n = self.n
        if n == 0:
            return
        cfg, g = self.cfg, self.g
        lane, u, v, q, r = self.lane, self.u, self.v, self.q, self.r
        ext_x = self.extent[:, 0]
        L = g.length
        front = u + ext_x
        rear = u - ext_x

        # --- leaders on the lane graph
        order = np.lexsort((u, lane))
        lanes_sorted, rears_sorted = lane[order], rear[order]
        gap = np.full(n, _NO_GAP)
        lead_v = np.zeros(n)
        same = lanes_sorted[1:] == lanes_sorted[:-1]
        a, b = order[:-1][same], order[1:][same]
        gap[a] = rear[b] - front[a]
        lead_v[a] = v[b]
        first = np.ones(n, dtype=bool)
        first[1:] = ~same
        first_rear = np.full(len(L) + 1, _NO_GAP)  # index -1 (no lane) maps to the padding slot
        first_idx = np.full(len(L) + 1, -1, dtype=np.int64)
        first_rear[lanes_sorted[first]] = rears_sorted[first]
        first_idx[lanes_sorted[first]] = order[first]
        to_end = L[lane] - front
        # any successor of p
        succ = g.succ[lane]  # (n, S), -1 padded
        cand = first_rear[succ]
        k = np.argmin(cand, axis=1)
        rows = np.arange(n)
        gb = to_end + cand[rows, k]
        better = gb < gap
        gap = np.where(better, gb, gap)
        lead_v = np.where(better, v[np.maximum(first_idx[succ[rows, k]], 0)], lead_v)
        # first vehicle on r, beyond q
        Lq = np.where(q >= 0, L[np.maximum(q, 0)], _NO_GAP)
        gc = to_end + Lq + first_rear[r]
        better = gc < gap
        gap = np.where(better, gc, gap)
        lead_v = np.where(better, v[np.maximum(first_idx[r], 0)], lead_v)
        # stop line before an unreserved junction lane
        q_junction = (q >= 0) & g.junction[np.maximum(q, 0)] & ~g.junction[lane]
        held = self.hold == q
        stop = q_junction & ~held
        gs = to_end - 0.5
        better = stop & (gs < gap)
        gap = np.where(better, gs, gap)
        lead_v = np.where(better, 0.0, lead_v)
        # dead end: stop at the end of the lane
        dead = q < 0
        gap = np.where(dead & (to_end < gap), to_end, gap)
        lead_v = np.where(dead, 0.0, lead_v)
        # the ego, geometrically
        ge, ve = self._ego_gaps(ego)
        better = ge < gap
        gap = np.where(better, ge, gap)
        lead_v = np.where(better, ve, lead_v)

        # --- desired speed and IDM
        v_cap_q = np.where(q >= 0, g.v_cap[np.maximum(q, 0)], 0.0)
        v0 = np.minimum(g.v_cap[lane], np.sqrt(v_cap_q**2 + 2.0 * cfg.idm_decel * np.maximum(L[lane] - u, 0.0)))
        v0 = np.maximum(v0, 0.5)
        ab = 2.0 * math.sqrt(cfg.idm_accel * cfg.idm_decel)
        s_star = cfg.idm_min_gap + np.maximum(v * cfg.idm_headway + v * (v - lead_v) / ab, 0.0)
        acc = cfg.idm_accel * (1.0 - (v / v0) ** 4 - (s_star / np.maximum(gap, 0.05)) ** 2)
        # friction circle: braking gets what the curve's lateral acceleration leaves of grip * g
        a_grip = cfg.grip * 9.81
        a_lat = v * v * g.kappa[lane]
        max_decel = np.minimum(cfg.max_decel, np.sqrt(np.maximum(a_grip**2 - a_lat**2, 0.0)))
        acc = np.clip(acc, -max_decel, cfg.idm_accel)
        v_new = np.maximum(v + acc * dt, 0.0)
        adv = v_new * dt
        limit = np.maximum(gap - _MIN_SAFE, 0.0)
        clamp = adv > limit
        adv = np.where(clamp, limit, adv)
        v_new = np.where(clamp, adv / dt, v_new)
        self.v = v_new
        self.u = u + adv

        # --- lane transitions (few per step)
        over = np.flatnonzero(self.u >= L[self.lane])
        for i in over:
            while self.q[i] >= 0 and self.u[i] >= L[self.lane[i]]:
                self.u[i] -= L[self.lane[i]]
                self.lane[i] = self.q[i]
                self.q[i] = self.r[i]
                self.r[i] = self._choose(int(self.q[i])) if self.q[i] >= 0 else -1
            if self.q[i] < 0:
                self.u[i] = min(self.u[i], L[self.lane[i]])
        # release holds once the rear has left the junction lane
        holding = self.hold >= 0
        in_hold = self.lane == self.hold
        released = holding & ~in_hold & (self.hold != self.q) & ((self.u - ext_x) > 0.0)
        self.hold[released] = -1
        # a vehicle inside a junction lane keeps holding it
        inside = g.junction[self.lane] & (self.hold < 0)
        self.hold[inside] = self.lane[inside]

        self._grant(ext_x, ego)
        self._update_pose(dt)

    def _grant(self, ext_x: np.ndarray, ego) -> None:
        g, cfg = self.g, self.cfg
        ex, ey, eyaw, espeed, ehl, ehw = ego
        # where the ego will be over the next ego_yield_time seconds at its current velocity (straight line)
        horizon = np.linspace(0.0, cfg.ego_yield_time, 7) * max(espeed, 0.0)
        c, sn = math.cos(math.radians(eyaw)), math.sin(math.radians(eyaw))
        ego_path = np.stack([ex + horizon * c, ey + horizon * sn], axis=1)
        q = self.q
        want = (q >= 0) & ~g.junction[self.lane]
        want &= g.junction[np.maximum(q, 0)] & (self.hold != q)
        want &= (g.length[self.lane] - self.u - ext_x) < cfg.junction_approach
        # only the front-most vehicle of a lane may request (a follower's grant would block its own leader)
        front_u = np.full(len(g.length), -np.inf)
        np.maximum.at(front_u, self.lane, self.u)
        want &= self.u >= front_u[self.lane]
        cands = np.flatnonzero(want)
        if cands.size == 0:
            return
        cands = cands[np.argsort(g.length[self.lane[cands]] - self.u[cands], kind="stable")]
        # first rear on every lane (for exit room)
        first_rear = np.full(len(g.length) + 1, _NO_GAP)
        np.minimum.at(first_rear, self.lane, self.u - ext_x)
        for i in cands:
            holders = np.flatnonzero(self.hold >= 0)
            hl = self.hold[holders]
            qi = q[i]
            if np.any(g.conflict[qi, hl] & (hl != qi)):
                continue
            # yield to the ego when it is in, or about to enter, the junction lane's area
            d, _ = g.trees[int(qi)].query(ego_path, k=1)
            if np.min(d) < ehl + ehw + cfg.conflict_distance:
                continue
            exit_lane = self.r[i]
            if exit_lane >= 0:
                need = 2.0 * ext_x[i] + cfg.idm_min_gap
                if first_rear[exit_lane] < need:
                    continue
                # another holder bound for the same exit from a different junction lane
                others = holders[(self.q[holders] == exit_lane) | (self.lane[holders] == exit_lane)]
                if np.any((self.hold[others] != qi) & (self.lane[others] != exit_lane)):
                    continue
            self.hold[i] = qi

    def _ego_gaps(self, ego) -> tuple[np.ndarray, np.ndarray]:
        """Gap (m, bumper to the ego) and the ego's speed along the path for NPCs whose path meets the ego."""
        cfg, g = self.cfg, self.g
        n = self.n
        gap = np.full(n, _NO_GAP)
        lead = np.zeros(n)
        ex, ey, eyaw, espeed, ehl, ehw = ego
        near = np.flatnonzero(np.hypot(self.x - ex, self.y - ey) < cfg.lookahead + ehl + 5.0)
        if near.size == 0:
            return gap, lead
        K = int(math.ceil(cfg.lookahead / _PATH_STEP))
        d = _PATH_STEP * np.arange(1, K + 1)  # (K,)
        lane, u, q, r = self.lane[near], self.u[near], self.q[near], self.r[near]
        L = g.length
        a = u[:, None] + d[None, :]  # (m, K) arc ahead
        Lp = L[lane][:, None]
        Lq = np.where(q >= 0, L[np.maximum(q, 0)], 0.0)[:, None]
        on_p = a < Lp
        on_q = ~on_p & (a - Lp < Lq) & (q >= 0)[:, None]
        on_r = ~on_p & ~on_q & (r >= 0)[:, None]
        li = np.where(on_p, lane[:, None], np.where(on_q, np.maximum(q, 0)[:, None], np.maximum(r, 0)[:, None]))
        ua = np.where(on_p, a, np.where(on_q, a - Lp, a - Lp - Lq))
        valid = on_p | on_q | on_r
        px, py, _ = g.pose(li.reshape(-1), ua.reshape(-1))
        c, s = math.cos(math.radians(eyaw)), math.sin(math.radians(eyaw))
        dx, dy = px - ex, py - ey
        fx = dx * c + dy * s
        fy = -dx * s + dy * c
        hw = self.extent[near, 1][:, None]
        hit = (np.abs(fx).reshape(-1, K) < ehl + cfg.ego_margin) & (np.abs(fy).reshape(-1, K) < ehw + hw + cfg.ego_margin)
        hit &= valid & (d[None, :] > self.extent[near, 0][:, None])
        any_hit = hit.any(axis=1)
        if not any_hit.any():
            return gap, lead
        kk = np.argmax(hit, axis=1)
        dist = d[kk] - self.extent[near, 0] - 0.5 * _PATH_STEP
        gap[near[any_hit]] = np.maximum(dist[any_hit], 0.0)
        yaw_n = np.radians(self.yaw[near])
        along = espeed * np.cos(math.radians(eyaw) - yaw_n)
        lead[near[any_hit]] = np.maximum(along[any_hit], 0.0)
        return gap, lead
