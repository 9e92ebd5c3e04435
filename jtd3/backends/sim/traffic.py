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

Deterministic for a seed. Frame: CARLA's. The per-tick arithmetic (1-3 and the poses) runs as loops compiled with
numba in :mod:`jtd3.backends.sim.traffic_kernels`; this module keeps the state, spawning and lane changes.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from jtd3.backends.base import Vehicles
from jtd3.backends.sim import traffic_kernels as kernels
from jtd3.backends.sim.config import NpcConfig
from jtd3.roads.network import RoadNetwork

__all__ = ["LaneGraph", "Traffic"]


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
        for members in by_junction.values():
            trees = {i: cKDTree(net.lane_polyline(lanes[i])[0]) for i in members}
            for a in members:
                for b in members:
                    if a < b:
                        d, _ = trees[a].query(net.lane_polyline(lanes[b])[0], k=1)
                        if np.min(d) < cfg.conflict_distance:
                            self.conflict[a, b] = self.conflict[b, a] = True
        self.spawnable = np.flatnonzero(~self.junction & (self.length > 15.0))
        if self.spawnable.size == 0:
            raise ValueError("the map has no driving lane outside junctions longer than 15 m to spawn NPCs on")
        # the arrays the compiled per-tick code reads (jtd3.backends.sim.traffic_kernels)
        self.tables = (self.length, self.succ, self.junction, self.v_cap, self.kappa, self.start.astype(np.int64),
                       self.count.astype(np.int64), self.step.astype(np.float64),
                       np.ascontiguousarray(net.sample_xy[:, 0]), np.ascontiguousarray(net.sample_xy[:, 1]),
                       np.ascontiguousarray(net.sample_yaw, dtype=np.float64), self.conflict)

    @classmethod
    def for_network(cls, net: RoadNetwork, cfg: NpcConfig) -> "LaneGraph":
        cache = net.__dict__.setdefault("_lane_graph_cache", {})
        if cfg not in cache:
            cache[cfg] = cls(net, cfg)
        return cache[cfg]

    def pose(self, lane: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, yaw (deg) at arc length ``u`` on local lanes ``lane`` (vectorised, clamped to the lane)."""
        return kernels.pose(self.tables, np.asarray(lane, dtype=np.int64), np.asarray(u, dtype=np.float64))


class Traffic:
    """The NPCs of one episode. ``reset`` spawns them; ``step`` advances them by ``dt``."""

    def __init__(self, net: RoadNetwork, cfg: NpcConfig) -> None:
        self.cfg = cfg
        self.g = LaneGraph.for_network(net, cfg)
        self._idm = (cfg.idm_accel, cfg.idm_decel, cfg.idm_min_gap, cfg.idm_headway, cfg.max_decel,
                     (cfg.grip * 9.81) ** 2, 2.0 * math.sqrt(cfg.idm_accel * cfg.idm_decel), cfg.lookahead,
                     cfg.ego_margin)
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
        """Poses from (lane, u), velocity along the heading, acceleration over ``dt`` (zero without)."""
        if len(self.vel) != self.n:  # after a reset the previous velocities belong to other NPCs
            self.vel = np.zeros((self.n, 3))
        self.x, self.y, self.yaw, self.vel, self.acc = kernels.pose_and_velocity(
            self.g.tables, self.lane, self.u, self.v, self.vel, float(dt or 0.0))

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
        L = g.length
        ext_x = self.extent[:, 0]
        ego = tuple(float(e) for e in ego)
        # leaders on the lane graph and the ego, IDM, the advance (compiled: traffic_kernels.advance)
        self.v, adv = kernels.advance(g.tables, self._idm, float(dt), self.lane, self.u, self.v, self.q, self.r,
                                      self.hold, self.x, self.y, self.yaw, self.extent, ego)
        self.u = self.u + adv

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
        q = self.q
        cands = kernels.junction_requests(g.tables, self.lane, self.u, q, self.hold, ext_x, cfg.junction_approach)
        if cands.size == 0:
            return
        ex, ey, eyaw, espeed, ehl, ehw = ego
        # where the ego will be over the next ego_yield_time seconds at its current velocity (straight line)
        horizon = np.linspace(0.0, cfg.ego_yield_time, 7) * max(espeed, 0.0)
        c, sn = math.cos(math.radians(eyaw)), math.sin(math.radians(eyaw))
        ego_path = np.stack([ex + horizon * c, ey + horizon * sn], axis=1)
        kernels.grant(g.tables, cands, self.lane, self.u, q, self.r, self.hold, ext_x, ego_path,
                      ehl + ehw + cfg.conflict_distance, cfg.idm_min_gap)
