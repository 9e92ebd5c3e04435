"""Route planning on the driving-lane graph: shortest routes (Dijkstra) and seeded random routes.

:class:`RoutePlanning` is mixed into :class:`jtd3.roads.network.RoadNetwork`; it uses the network's lanes, lane
graph (``_successors``), ``project`` and ``lane_centre``.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from jtd3.roads.lanes import Route

__all__ = ["RoutePlanning"]


class RoutePlanning:
    """``plan_route`` and ``random_route`` of :class:`jtd3.roads.network.RoadNetwork`."""

    def _arc_to(self, li: int, s: float) -> float:
        """Distance travelled from the start of lane ``li`` to OpenDRIVE ``s`` (along travel)."""
        info = self.lanes[li]
        return (s - info.s0) if info.forward else (info.s1 - s)

    def plan_route(
        self,
        start: tuple[float, float],
        goal: tuple[float, float],
        start_yaw: float | None = None,
        spacing: float = 1.0,
    ) -> Route:
        """Shortest route (Dijkstra, cost = lane length) on the driving lanes from ``start`` to ``goal``.

        Both locations are projected onto driving lanes first (``start_yaw`` picks the start lane's direction).
        Raises ``ValueError`` when the goal cannot be reached.
        """
        ps = self.project(start[0], start[1], yaw=start_yaw)
        pg = self.project(goal[0], goal[1])
        return self._route_between(ps.lane_index, ps.s, pg.lane_index, pg.s, spacing)

    def _route_between(self, l0: int, s0: float, l1: int, s1: float, spacing: float) -> Route:
        a0, a1 = self._arc_to(l0, s0), self._arc_to(l1, s1)
        if l0 == l1 and a1 >= a0:
            return self._make_route([(l0, s0, s1)], spacing)
        # Dijkstra from the end of l0 over whole lanes; cost to reach the *start* of a lane.
        start_cost = self.lanes[l0].length - a0
        dist = {}
        prev: dict[int, int] = {}
        heap = []
        for n in self._successors[l0]:
            if self.lanes[n].type == "driving":
                heapq.heappush(heap, (start_cost, n, l0))
        while heap:
            c, n, p = heapq.heappop(heap)
            if n in dist:
                continue
            dist[n] = c
            prev[n] = p
            if n == l1:
                break
            for m in self._successors[n]:
                if m not in dist and self.lanes[m].type == "driving":
                    heapq.heappush(heap, (c + self.lanes[n].length, m, n))
        if l1 not in dist:
            raise ValueError(
                f"no route from lane (road {self.lanes[l0].road_id}, lane {self.lanes[l0].lane_id}) to "
                f"(road {self.lanes[l1].road_id}, lane {self.lanes[l1].lane_id})"
            )
        chain = [l1]
        while chain[-1] != l0:
            chain.append(prev[chain[-1]])
            if len(chain) > len(self.lanes) + 1:
                raise RuntimeError("route reconstruction loops")
        chain.reverse()
        parts = []
        for i, li in enumerate(chain):
            info = self.lanes[li]
            a = s0 if i == 0 else (info.s0 if info.forward else info.s1)
            b = s1 if i == len(chain) - 1 else (info.s1 if info.forward else info.s0)
            parts.append((li, a, b))
        return self._make_route(parts, spacing)

    def _make_route(self, parts: list[tuple[int, float, float]], spacing: float) -> Route:
        xs, ys, yaws = [], [], []
        for li, a, b in parts:
            n = max(int(math.ceil(abs(b - a) / spacing)), 1) + 1
            grid = np.linspace(a, b, n)
            x, y, _z, yaw, _w = self.lane_centre(li, grid)
            if xs:  # drop the duplicated joint
                x, y, yaw = x[1:], y[1:], yaw[1:]
            xs.append(x)
            ys.append(y)
            yaws.append(yaw)
        pts = np.stack([np.concatenate(xs), np.concatenate(ys)], axis=1)
        keep = np.concatenate([[True], np.hypot(*np.diff(pts, axis=0).T) > 1e-6])
        pts = pts[keep]
        yaw = np.concatenate(yaws)[keep]
        s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
        return Route(tuple(parts), pts, yaw, s)

    def random_route(
        self, rng: np.random.Generator, min_length: float = 100.0, max_length: float = 400.0, spacing: float = 1.0
    ) -> Route:
        """A random route on driving lanes: random start lane and position (outside junctions), then a random walk
        through the lane graph until the length is in [min_length, max_length]. Deterministic for ``rng``."""
        if not 0 < min_length <= max_length:
            raise ValueError(f"need 0 < min_length <= max_length, got {min_length}, {max_length}")
        starts = [i.index for i in self.lanes if i.type == "driving" and not i.is_junction and i.length > 1.0]
        if not starts:
            raise ValueError("the map has no driving lanes outside junctions")
        for _ in range(100):
            l0 = int(rng.choice(starts))
            info = self.lanes[l0]
            a0 = float(rng.uniform(0.0, 0.5 * info.length))
            s0 = info.s0 + a0 if info.forward else info.s1 - a0
            parts = []
            li, s, total = l0, s0, 0.0
            target = float(rng.uniform(min_length, max_length))
            while True:
                cur = self.lanes[li]
                end = cur.s1 if cur.forward else cur.s0
                left = abs(end - s)
                if total + left >= target:
                    stop = s + (target - total) if cur.forward else s - (target - total)
                    parts.append((li, s, stop))
                    total = target
                    break
                parts.append((li, s, end))
                total += left
                nxt = [n for n in self._successors[li] if self.lanes[n].type == "driving"]
                if not nxt:
                    break
                li = int(rng.choice(nxt))
                ni = self.lanes[li]
                s = ni.s0 if ni.forward else ni.s1
            if total >= min_length:
                return self._make_route(parts, spacing)
        raise ValueError(f"could not find a route of at least {min_length} m in 100 tries")
