"""Road network with CARLA's waypoint semantics, built from OpenDRIVE by jtd3's own reader.

The public entry points are :meth:`RoadNetwork.from_opendrive` and :func:`jtd3.roads.towns.load_town`. A
:class:`RoadNetwork` answers what ``carla.Map`` answers, in CARLA's frame (metres, x east, y south, yaw in degrees clockwise seen
from above):

- :meth:`RoadNetwork.project` / :meth:`RoadNetwork.project_many`: nearest lane centre of the requested lane
  types, like ``carla.Map.get_waypoint(location, project_to_road=True, lane_type=...)``, plus the signed lateral
  offset of the query point from that centre. **Sign convention: positive = right of the lane's direction of
  travel** (CARLA's right vector, yaw + 90 degrees).
- :meth:`RoadNetwork.lane_at`: ``get_waypoint(..., project_to_road=False)`` (``None`` unless the point is within
  half a lane width of the nearest lane centre).
- :meth:`RoadNetwork.next` / :meth:`RoadNetwork.previous`: ``waypoint.next(d)`` / ``previous(d)`` along the lane
  graph (a list: one waypoint per branch).
- :meth:`RoadNetwork.left_lane` / :meth:`RoadNetwork.right_lane`, :attr:`Waypoint.lane_change`,
  :attr:`Waypoint.left_marking` / :attr:`Waypoint.right_marking`: lane change information as CARLA derives it.
- :meth:`RoadNetwork.topology`: ``carla.Map.get_topology()`` (driving lanes).
- :meth:`RoadNetwork.plan_route` (Dijkstra between two locations on the driving-lane graph) and
  :meth:`RoadNetwork.random_route` (random start and goal from a seeded generator), in
  :mod:`jtd3.roads.planning`.

The values it hands out (:class:`~jtd3.roads.lanes.Waypoint`, :class:`~jtd3.roads.lanes.Projection`,
:class:`~jtd3.roads.lanes.Route`, ...) are in :mod:`jtd3.roads.lanes`.

CARLA's own road code is the oracle: ``tests/test_roads_carla_oracle.py`` compares all of this with
``carla.Map(name, xodr)`` at thousands of points.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from jtd3.roads.lanes import (
    LANE_CHANGE_BITS,
    LANE_CHANGE_NAMES,
    LANE_TYPES,
    MARK_TYPES,
    LaneInfo,
    LaneMarking,
    Projection,
    ProjectionBatch,
    Waypoint,
)
from jtd3.roads.opendrive import Lane, LaneSection, OpenDrive, Road, RoadMark, parse_opendrive
from jtd3.roads.planning import RoutePlanning
from jtd3.roads.projection import SampleGrid, project_chords

__all__ = ["RoadNetwork"]

# Spacing (m) of the dense lane-centre polylines used for nearest-lane queries. Linear interpolation between
# samples 0.25 m apart deviates from an 8 m radius arc by under 1 mm.
_SAMPLE_STEP = 0.25
# Nearest sample points examined per query (both neighbouring segments of each are tested).
_K_NEAREST = 8
_K_NEAREST_YAW = 24


def _wrap_deg(a: np.ndarray | float) -> np.ndarray | float:
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


class RoadNetwork(RoutePlanning):
    """Lanes, lane graph and spatial index of one OpenDRIVE map. Build with :meth:`from_opendrive`."""

    def __init__(self, odr: OpenDrive, text: str, name: str = "custom") -> None:
        self.odr = odr
        self.opendrive_text = text
        self.name = name
        self.lanes: list[LaneInfo] = []
        self._lane_key: dict[tuple[int, int, int], int] = {}
        for road in sorted(odr.roads.values(), key=lambda r: r.id):
            for si, sec in enumerate(road.sections):
                for lid in sorted(sec.lanes):
                    if lid == 0:
                        continue
                    lane = sec.lanes[lid]
                    info = LaneInfo(len(self.lanes), road.id, si, lid, lane.type, sec.s, sec.s_end, road.junction)
                    self._lane_key[(road.id, si, lid)] = info.index
                    self.lanes.append(info)
        self._successors = [self._compute_next(info) for info in self.lanes]
        self._predecessors: list[list[int]] = [[] for _ in self.lanes]
        for i, succ in enumerate(self._successors):
            for j in succ:
                self._predecessors[j].append(i)
        self._build_samples()
        self._grids: dict[frozenset[str], SampleGrid] = {}

    # ------------------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_opendrive(cls, text: str, name: str = "custom") -> "RoadNetwork":
        """Build from OpenDRIVE XML text (e.g. ``carla.Map.to_opendrive()``). Raises ``ValueError`` if malformed."""
        return cls(parse_opendrive(text), text, name)

    def _road(self, info: LaneInfo) -> Road:
        return self.odr.roads[info.road_id]

    def _section(self, info: LaneInfo) -> LaneSection:
        return self.odr.roads[info.road_id].sections[info.section_id]

    def _lane(self, info: LaneInfo) -> Lane:
        return self._section(info).lanes[info.lane_id]

    def _edge_lane(self, road_id: int, from_start: bool, lane_id: int) -> int | None:
        """Lane ``lane_id`` in the first (from_start) or last section of ``road_id`` (CARLA's GetEdgeLanePointer)."""
        road = self.odr.roads.get(road_id)
        if road is None:
            return None
        si = 0 if from_start else len(road.sections) - 1
        return self._lane_key.get((road_id, si, lane_id))

    def _compute_next(self, info: LaneInfo) -> list[int]:
        """Successor lanes in the direction of travel, following CARLA's MapBuilder rules."""
        road = self._road(info)
        lane = self._lane(info)
        forward = info.forward
        # Another section of the same road.
        if forward and info.section_id + 1 < len(road.sections):
            nxt = lane.successor
            return [] if nxt is None else [k for k in [self._lane_key.get((road.id, info.section_id + 1, nxt))] if k is not None]
        if not forward and info.section_id > 0:
            nxt = lane.predecessor
            return [] if nxt is None else [k for k in [self._lane_key.get((road.id, info.section_id - 1, nxt))] if k is not None]
        link = road.successor if forward else road.predecessor
        next_lane = lane.successor if forward else lane.predecessor
        if link is None:
            return []
        kind, element, _contact = link
        if kind == "junction":
            junction = self.odr.junctions.get(element)
            if junction is None:
                return []
            out = []
            for con in junction.connections:
                if con.incoming_road != road.id:
                    continue
                for frm, to in con.lane_links:
                    if frm == info.lane_id:
                        k = self._edge_lane(con.connecting_road, con.contact_point == "start", to)
                        if k is not None:
                            out.append(k)
            return out
        if next_lane is None or next_lane == 0:
            return []
        k = self._edge_lane(element, next_lane <= 0, next_lane)
        return [] if k is None else [k]

    # ------------------------------------------------------------------------------------------------------
    # Lane geometry (exact, from the OpenDRIVE description)

    def lane_centre(self, lane_index: int, s: np.ndarray | float) -> tuple[np.ndarray, ...]:
        """Exact lane centre at OpenDRIVE ``s``: (x, y, z, yaw_deg, width) in CARLA's frame, yaw along travel.

        Mirrors CARLA's ``Lane::ComputeTransform``: reference line + laneOffset + the widths of the inner lanes
        plus half the lane's own width; the heading adds the slopes of those offsets.
        """
        info = self.lanes[lane_index]
        road = self._road(info)
        sec = self._section(info)
        s = np.asarray(s, dtype=np.float64)
        ds = s - sec.s
        x, y, hdg = road.reference(s)
        off, off_slope = road.lane_offset(s)
        ids = sec.right_ids() if info.lane_id < 0 else sec.left_ids()
        t = np.zeros_like(s)  # to the right of the reference line (CARLA's sign)
        tan = np.zeros_like(s)
        sign = 1.0 if info.lane_id < 0 else -1.0
        for lid in ids:
            lane = sec.lanes[lid]
            w, wslope = lane.width(ds), lane.width_slope(ds)
            if lid == info.lane_id:
                t = t + sign * 0.5 * w
                tan = tan + sign * 0.5 * wslope
                width = w
                break
            t = t + sign * w
            tan = tan + sign * wslope
        t_right = t - off
        heading = hdg - (tan - off_slope)
        cx = x + t_right * np.sin(hdg)
        cy = y - t_right * np.cos(hdg)
        yaw = -np.degrees(heading)
        if info.lane_id > 0:
            yaw = yaw + 180.0
        return cx, -cy, road.elevation(s), _wrap_deg(yaw), width

    def _build_samples(self) -> None:
        xs, ys, yaws, ws, ss, lane_idx = [], [], [], [], [], []
        n_lanes = len(self.lanes)
        self._sample_start = np.zeros(n_lanes + 1, dtype=np.int64)
        self._sample_step = np.zeros(n_lanes)
        count = 0
        for info in self.lanes:
            n = max(int(math.ceil(info.length / _SAMPLE_STEP)), 1) + 1
            travel = np.linspace(0.0, info.length, n)
            grid = info.s0 + travel if info.forward else info.s1 - travel  # travel order
            x, y, _z, yaw, w = self.lane_centre(info.index, grid)
            xs.append(x)
            ys.append(y)
            yaws.append(yaw)
            ws.append(w)
            ss.append(grid)
            lane_idx.append(np.full(n, info.index, dtype=np.int64))
            self._sample_start[info.index] = count
            self._sample_step[info.index] = info.length / (n - 1)
            count += n
        self._sample_start[-1] = count
        self.sample_xy = np.stack([np.concatenate(xs), np.concatenate(ys)], axis=1)
        self.sample_yaw = np.concatenate(yaws)
        self.sample_width = np.concatenate(ws)
        self.sample_s = np.concatenate(ss)
        self.sample_lane = np.concatenate(lane_idx)
        self.sample_arc = self.sample_s - np.array([i.s0 for i in self.lanes])[self.sample_lane]
        backward = ~np.array([i.forward for i in self.lanes])[self.sample_lane]
        self.sample_arc[backward] = (np.array([i.s1 for i in self.lanes])[self.sample_lane] - self.sample_s)[backward]
        self._lane_type = np.array([info.type for info in self.lanes])
        self._lane_junction = np.array([info.junction_id >= 0 for info in self.lanes])
        self._lane_road = np.array([info.road_id for info in self.lanes], dtype=np.int64)
        self._lane_id = np.array([info.lane_id for info in self.lanes], dtype=np.int64)
        self._lane_s0 = np.array([info.s0 for info in self.lanes])
        self._lane_s1 = np.array([info.s1 for info in self.lanes])
        self._lane_forward = np.array([info.forward for info in self.lanes])
        # increments to the next sample of the same lane (0 at a lane's last sample), for interpolation
        nxt = np.minimum(np.arange(len(self.sample_lane)) + 1, len(self.sample_lane) - 1)
        last = np.ones(len(self.sample_lane), dtype=bool)
        last[:-1] = self.sample_lane[1:] != self.sample_lane[:-1]
        keep = ~last
        self._d_x = np.where(keep, self.sample_xy[nxt, 0] - self.sample_xy[:, 0], 0.0)
        self._d_y = np.where(keep, self.sample_xy[nxt, 1] - self.sample_xy[:, 1], 0.0)
        self._d_yaw = np.where(keep, (self.sample_yaw[nxt] - self.sample_yaw + 180.0) % 360.0 - 180.0, 0.0)
        self._d_w = np.where(keep, self.sample_width[nxt] - self.sample_width, 0.0)
        counts = self._sample_start[1:] - self._sample_start[:-1]
        self._inv_step = 1.0 / np.maximum(self._sample_step, 1e-12)
        self._last_step = np.maximum(counts - 2, 0)
        self._build_carla_segments()

    def _build_carla_segments(self) -> None:
        """The segments of CARLA's nearest-lane R-tree (``Map::CreateRtree``), in travel order per lane.

        A lane inside one ``line`` geometry is one segment; otherwise the lane is walked in 1 m steps and a
        segment ends where the heading has turned by more than pi/100 since the segment's start. CARLA's
        ``get_waypoint`` projects onto the nearest such chord and advances s by the distance along the chord;
        doing the same keeps projections within millimetres of CARLA's.
        """
        eps = 1e-6
        seg_a, seg_b, seg_lane = [], [], []
        self._seg_start = np.zeros(len(self.lanes) + 1, dtype=np.int64)
        for info in self.lanes:
            road = self._road(info)
            starts = [g.s for g in road.geometries]
            gi = max(i for i, s in enumerate(starts) if s <= info.s0 + 1e-12) if starts[0] <= info.s0 + 1e-12 else 0
            g = road.geometries[gi]
            straight = g.kind == "line" and info.s0 >= g.s and info.s1 <= g.s + g.length
            t_end = info.length - 10 * 2.2e-16  # CARLA starts/ends lanes 10 epsilons inside
            if straight:
                bps = [0.0, max(t_end - eps, 0.0)]
            else:
                steps = np.arange(0.0, info.length, 1.0)
                travel = np.concatenate([steps[1:], [max(t_end - eps, 0.0)]]) if len(steps) > 1 else np.array([max(t_end - eps, 0.0)])
                travel = travel[travel > 0.0]
                s_of = (lambda t: info.s0 + t) if info.forward else (lambda t: info.s1 - t)
                yaw0 = float(self.lane_centre(info.index, np.array([s_of(0.0)]))[3][0])
                yaws = self.lane_centre(info.index, s_of(travel))[3]
                bps = [0.0]
                cur = yaw0
                for t, yv in zip(travel[:-1], yaws[:-1]):
                    if abs(_wrap_deg(yv - cur)) > 1.8:
                        bps.append(float(t))
                        cur = float(yv)
                bps.append(float(travel[-1]) if len(travel) else 0.0)
            self._seg_start[info.index] = len(seg_a)
            for ta, tb in zip(bps[:-1], bps[1:]):
                seg_a.append(ta)
                seg_b.append(tb)
                seg_lane.append(info.index)
        self._seg_start[-1] = len(seg_a)
        self.seg_lane = np.array(seg_lane, dtype=np.int64)
        ta, tb = np.array(seg_a), np.array(seg_b)
        fwd = self._lane_forward[self.seg_lane]
        self.seg_sa = np.where(fwd, self._lane_s0[self.seg_lane] + ta, self._lane_s1[self.seg_lane] - ta)
        self.seg_sb = np.where(fwd, self._lane_s0[self.seg_lane] + tb, self._lane_s1[self.seg_lane] - tb)
        self.seg_ta, self.seg_tb = ta, tb
        p0 = np.zeros((len(ta), 2))
        p1 = np.zeros((len(ta), 2))
        for li in np.unique(self.seg_lane):
            m = self.seg_lane == li
            x, y = self.lane_centre(int(li), self.seg_sa[m])[:2]
            p0[m] = np.stack([x, y], 1)
            x, y = self.lane_centre(int(li), self.seg_sb[m])[:2]
            p1[m] = np.stack([x, y], 1)
        self.seg_p0, self.seg_p1 = p0, p1
        # CARLA segment of every dense sample (by travel distance).
        out = np.empty(len(self.sample_lane), dtype=np.int64)
        for li in range(len(self.lanes)):
            a, b = self._sample_start[li], self._sample_start[li + 1]
            s0, s1 = self._seg_start[li], self._seg_start[li + 1]
            idx = np.searchsorted(tb[s0:s1], self.sample_arc[a:b], side="left")
            out[a:b] = s0 + np.clip(idx, 0, s1 - s0 - 1)
        self.sample_seg = out
        # Hot-path tables: per dense sample its chord and the neighbouring chords of the same lane (a dummy
        # chord far away stands for "none"), and per chord its start, direction, 1/|d|^2, |d| and lane.
        n_seg = len(self.seg_lane)
        dummy = n_seg
        cand = np.stack([out - 1, out, out + 1], axis=1)
        same = (cand >= 0) & (cand < n_seg)
        same &= self.seg_lane[np.clip(cand, 0, n_seg - 1)] == self.sample_lane[:, None]
        d = p1 - p0
        len2 = np.maximum(d[:, 0] ** 2 + d[:, 1] ** 2, 1e-18)
        far = 1e12
        # grouped as the compiled projection (jtd3.roads.projection.project_chords) takes them
        self._chords = (
            np.where(same, cand, dummy),  # per sample: the chords to try
            np.append(p0[:, 0], far), np.append(p0[:, 1], far),  # chord start
            np.append(d[:, 0], 0.0), np.append(d[:, 1], 0.0),  # chord direction
            np.append(1.0 / len2, 0.0), np.append(np.sqrt(len2), 0.0),  # 1 / |d|^2, |d|
            np.append(self.seg_lane, 0),  # lane
            np.append(ta, 0.0), np.append(tb, 0.0),  # arc length at the chord's start and end
            np.append(np.degrees(np.arctan2(d[:, 1], d[:, 0])), 0.0),  # heading (deg)
        )
        self._lane_tables = (self._lane_forward, self._lane_s0, self._lane_s1, self._inv_step,
                             self._last_step.astype(np.int64), self._sample_start.astype(np.int64))
        self._sample_tables = tuple(np.ascontiguousarray(a, dtype=np.float64) for a in (
            self.sample_xy[:, 0], self.sample_xy[:, 1], self.sample_yaw, self.sample_width,
            self._d_x, self._d_y, self._d_yaw, self._d_w))

    def _grid(self, lane_types: frozenset[str]) -> SampleGrid:
        """The nearest-sample index over the dense samples of ``lane_types`` (built on first use)."""
        if lane_types not in self._grids:
            if "any" in lane_types:
                idx = np.arange(len(self.sample_lane))
            else:
                unknown = sorted(lane_types - set(LANE_TYPES))
                if unknown:
                    raise ValueError(f"unknown lane type(s) {unknown}; choices: any, {', '.join(LANE_TYPES)}")
                mask = np.isin(self._lane_type[self.sample_lane], sorted(lane_types))
                idx = np.flatnonzero(mask)
            if idx.size == 0:
                raise ValueError(f"the map has no lanes of type(s) {sorted(lane_types)}")
            self._grids[lane_types] = SampleGrid(self.sample_xy[idx], idx)
        return self._grids[lane_types]

    # ------------------------------------------------------------------------------------------------------
    # Queries

    def project_many(
        self,
        xy: np.ndarray,
        yaw: np.ndarray | None = None,
        lane_types: Sequence[str] = ("driving",),
    ) -> ProjectionBatch:
        """Project N points (N, 2) onto their nearest lane centre of ``lane_types`` (vectorised).

        Without ``yaw`` this is CARLA's ``get_waypoint(project_to_road=True)``: the nearest lane centre line.
        With ``yaw`` (degrees, (N,)), lanes whose heading differs from ``yaw`` by more than 90 degrees are
        skipped when a lane of matching direction has its centre within half a lane width of the point's
        nearest distance, which resolves overlapping junction lanes in favour of the vehicle's direction.
        """
        xy = np.ascontiguousarray(xy, dtype=np.float64).reshape(-1, 2)
        n = len(xy)
        grid = self._grid(frozenset(lane_types))
        nn = grid.nearest(xy, min(_K_NEAREST if yaw is None else _K_NEAREST_YAW, grid.size))  # dense samples (N, k)
        use_yaw = yaw is not None
        yaw = np.ascontiguousarray(yaw if use_yaw else np.zeros(n), dtype=np.float64).reshape(-1)
        li, (s, cx, cy, lane_yaw, width, lateral, distance) = project_chords(
            xy, yaw, use_yaw, nn, self._chords, self._lane_tables, self._sample_tables)
        return ProjectionBatch(
            lane_index=li,
            road_id=self._lane_road[li],
            lane_id=self._lane_id[li],
            s=s,
            x=cx,
            y=cy,
            yaw=lane_yaw,
            lane_width=width,
            lateral_offset=lateral,
            distance=distance,
            is_junction=self._lane_junction[li],
        )

    def project(
        self, x: float, y: float, yaw: float | None = None, lane_types: Sequence[str] = ("driving",)
    ) -> Projection:
        """Project one point (CARLA frame) onto the nearest lane centre; see :meth:`project_many`."""
        b = self.project_many(np.array([[x, y]]), None if yaw is None else np.array([yaw]), lane_types)
        wp = self.waypoint(int(b.lane_index[0]), float(b.s[0]))
        base = {f.name: getattr(wp, f.name) for f in dataclasses.fields(Waypoint)}
        base.update(x=float(b.x[0]), y=float(b.y[0]), yaw=float(b.yaw[0]), lane_width=float(b.lane_width[0]))
        return Projection(**base, lateral_offset=float(b.lateral_offset[0]), distance=float(b.distance[0]))

    def lane_at(self, x: float, y: float, lane_types: Sequence[str] = ("driving",)) -> Projection | None:
        """The lane containing (x, y), or ``None`` (CARLA's ``get_waypoint(project_to_road=False)``)."""
        p = self.project(x, y, lane_types=lane_types)
        return p if p.distance < 0.5 * p.lane_width else None

    def on_lane_many(self, xy: np.ndarray, lane_types: Sequence[str] = ("driving",)) -> np.ndarray:
        """Boolean (N,): whether each point lies inside a lane of ``lane_types`` (vectorised :meth:`lane_at`)."""
        return self.project_many(xy, lane_types=lane_types).inside

    def waypoint(self, lane_index: int, s: float) -> Waypoint:
        """The waypoint of lane ``lane_index`` at OpenDRIVE ``s`` (clamped to the lane's section)."""
        info = self.lanes[lane_index]
        s = float(min(max(s, info.s0), info.s1))
        x, y, z, yaw, w = self.lane_centre(lane_index, np.array([s]))
        left, right, change = self._markings(info, s)
        return Waypoint(
            lane_index=lane_index,
            road_id=info.road_id,
            section_id=info.section_id,
            lane_id=info.lane_id,
            s=s,
            x=float(x[0]),
            y=float(y[0]),
            z=float(z[0]),
            yaw=float(yaw[0]),
            lane_width=float(w[0]),
            lane_type=LANE_TYPES.get(info.type, "NONE"),
            is_junction=info.is_junction,
            junction_id=info.junction_id,
            left_marking=left,
            right_marking=right,
            lane_change=change,
        )

    def waypoint_xodr(self, road_id: int, lane_id: int, s: float) -> Waypoint | None:
        """Like ``carla.Map.get_waypoint_xodr``: ``None`` when the road, lane or ``s`` does not exist."""
        road = self.odr.roads.get(road_id)
        if road is None or not (0.0 <= s < road.length):
            return None
        for si, sec in enumerate(road.sections):
            if sec.s <= s < sec.s_end + 1e-9 and (road_id, si, lane_id) in self._lane_key:
                return self.waypoint(self._lane_key[(road_id, si, lane_id)], s)
        return None

    def _markings(self, info: LaneInfo, s: float) -> tuple[LaneMarking | None, LaneMarking | None, str]:
        sec = self._section(info)
        ds = s - sec.s
        outer = sec.lanes[info.lane_id].mark_at(ds)
        inner_id = info.lane_id + 1 if info.lane_id < 0 else info.lane_id - 1
        inner_lane = sec.lanes.get(inner_id)
        inner = inner_lane.mark_at(ds) if inner_lane is not None else None

        def conv(m: RoadMark | None) -> LaneMarking | None:
            if m is None:
                return None
            bits = LANE_CHANGE_BITS.get(m.lane_change, 0)
            return LaneMarking(MARK_TYPES.get(m.type, "Other"), m.color, m.width, LANE_CHANGE_NAMES[bits])

        # CARLA (client Waypoint::GetLaneChange): the outer record gives the right side, the inner the left;
        # a missing record allows both; Right/Left swap for records on the positive side.
        c_right = LANE_CHANGE_BITS.get(outer.lane_change, 0) if outer is not None else 3
        c_left = LANE_CHANGE_BITS.get(inner.lane_change, 0) if inner is not None else 3
        swap = {1: 2, 2: 1}
        if info.lane_id > 0:
            c_right = swap.get(c_right, c_right)
        if inner_id > 0:
            c_left = swap.get(c_left, c_left)
        change = (c_right & 1) | (c_left & 2)
        return conv(inner), conv(outer), LANE_CHANGE_NAMES[change]

    def next(self, wp: Waypoint, distance: float) -> list[Waypoint]:
        """Waypoints ``distance`` metres ahead along the travel direction, one per branch (``waypoint.next``)."""
        if not distance > 0.0:
            raise ValueError(f"distance must be > 0, got {distance!r}")
        return [self.waypoint(i, s) for i, s in self._advance(wp.lane_index, wp.s, distance, self._successors, True)]

    def previous(self, wp: Waypoint, distance: float) -> list[Waypoint]:
        """Waypoints ``distance`` metres behind, one per branch (``waypoint.previous``)."""
        if not distance > 0.0:
            raise ValueError(f"distance must be > 0, got {distance!r}")
        return [self.waypoint(i, s) for i, s in self._advance(wp.lane_index, wp.s, distance, self._predecessors, False)]

    def _advance(self, li: int, s: float, d: float, graph: list[list[int]], ahead: bool) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        stack = [(li, s, d)]
        while stack:
            li, s, d = stack.pop()
            info = self.lanes[li]
            fwd = info.forward if ahead else not info.forward
            remaining = (info.s1 - s) if fwd else (s - info.s0)
            if d <= remaining:
                out.append((li, s + d if fwd else s - d))
                continue
            for nxt in reversed(graph[li]):
                ni = self.lanes[nxt]
                nfwd = ni.forward if ahead else not ni.forward
                stack.append((nxt, ni.s0 if nfwd else ni.s1, d - remaining))
        return out

    def successors(self, lane_index: int) -> list[int]:
        """Lane indices reachable from the end of ``lane_index`` (all lane types, CARLA's lane graph)."""
        return list(self._successors[lane_index])

    def predecessors(self, lane_index: int) -> list[int]:
        return list(self._predecessors[lane_index])

    def left_lane(self, wp: Waypoint) -> Waypoint | None:
        """``waypoint.get_left_lane()``: the neighbour on the left of the travel direction (any type)."""
        lid = wp.lane_id
        new = -lid if abs(lid) == 1 else (lid - 1 if lid > 0 else lid + 1)
        k = self._lane_key.get((wp.road_id, wp.section_id, new))
        return None if k is None else self.waypoint(k, wp.s)

    def right_lane(self, wp: Waypoint) -> Waypoint | None:
        """``waypoint.get_right_lane()``: the neighbour on the right of the travel direction (any type)."""
        lid = wp.lane_id
        new = lid + 1 if lid > 0 else lid - 1
        k = self._lane_key.get((wp.road_id, wp.section_id, new))
        return None if k is None else self.waypoint(k, wp.s)

    def lane_start(self, lane_index: int) -> Waypoint:
        info = self.lanes[lane_index]
        return self.waypoint(lane_index, info.s0 if info.forward else info.s1)

    def lane_end(self, lane_index: int) -> Waypoint:
        info = self.lanes[lane_index]
        return self.waypoint(lane_index, info.s1 if info.forward else info.s0)

    def topology(self) -> list[tuple[Waypoint, Waypoint]]:
        """``carla.Map.get_topology()``: (start of a driving lane, start of each successor) pairs; a lane without
        successors is paired with its own end, as CARLA does."""
        out = []
        for info in self.lanes:
            if info.type != "driving":
                continue
            succ = self._successors[info.index]
            if not succ:
                # CARLA pairs a dead-end lane's start with its own end, except where that end is the road's
                # end (its float lookup at s = road length fails there and the pair is dropped).
                if not (info.forward and info.s1 >= self._road(info).length - 1e-6):
                    out.append((self.lane_start(info.index), self.lane_end(info.index)))
            for nxt in succ:
                out.append((self.lane_start(info.index), self.lane_start(nxt)))
        return out

    def driving_lanes(self) -> list[int]:
        return [i.index for i in self.lanes if i.type == "driving"]

    def lane_polyline(self, lane_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Dense centre polyline of a lane in travel order: (xy (M, 2), yaw (M,), arc length (M,), OpenDRIVE s)."""
        a, b = self._sample_start[lane_index], self._sample_start[lane_index + 1]
        return self.sample_xy[a:b], self.sample_yaw[a:b], self.sample_arc[a:b], self.sample_s[a:b]

    def lane_length(self, lane_index: int) -> float:
        return self.lanes[lane_index].length

    def speed_limit(self, lane_index: int) -> float | None:
        """Speed limit (m/s) of the lane's road from its ``<type><speed>`` record, ``None`` without one."""
        info = self.lanes[lane_index]
        return self._road(info).speed_limit(0.5 * (info.s0 + info.s1))

    def bounds(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of all lane centres, CARLA frame, padded by ``margin`` metres."""
        lo = self.sample_xy.min(axis=0) - margin
        hi = self.sample_xy.max(axis=0) + margin
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

