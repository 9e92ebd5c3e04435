"""The compiled per-tick loops (numba): the nearest-sample grid, the NPC leader and junction rules, the route
foot point. Each test states the rule on a small case a wrong loop bound or tie-break would break."""

import numpy as np
import pytest

from jtd3.backends.sim import traffic_kernels as kernels
from jtd3.backends.sim.config import NpcConfig
from jtd3.backends.sim.traffic import LaneGraph
from jtd3.roads.projection import SampleGrid, nearest_on_polyline
from jtd3.roads.towns import load_town


@pytest.fixture(scope="module")
def town01():
    return load_town("town01")


def test_sample_grid_finds_the_exact_k_nearest_samples_near_and_far_from_the_lanes(town01):
    net = town01
    idx = np.flatnonzero(np.isin(net._lane_type[net.sample_lane], ["driving"]))
    grid = SampleGrid(net.sample_xy[idx], idx)
    rng = np.random.default_rng(0)
    lo, hi = net.sample_xy[idx].min(0), net.sample_xy[idx].max(0)
    pts = np.concatenate([
        net.sample_xy[idx][rng.integers(0, len(idx), 150)] + rng.normal(0.0, 2.0, (150, 2)),  # on the roads
        rng.uniform(lo - 80.0, hi + 80.0, (50, 2)),  # anywhere, also far outside the grid
    ])
    for k in (1, 8, 24):
        got = grid.nearest(pts, k)
        assert got.shape == (len(pts), k) and np.isin(got, idx).all()
        d_all = np.hypot(*(net.sample_xy[idx][None] - pts[:, None]).transpose(2, 0, 1))
        want = np.sort(d_all, axis=1)[:, :k]
        d_got = np.hypot(*(net.sample_xy[got] - pts[:, None]).transpose(2, 0, 1))
        assert np.array_equal(d_got, want), f"k={k}: not the k nearest, nearest first"
        assert all(len(set(row)) == k for row in got)


def test_project_many_reads_the_grid_of_the_requested_lane_types(town01):
    p = town01.project_many(np.array([[92.0, 37.0]]), lane_types=("sidewalk",))
    q = town01.project_many(np.array([[92.0, 37.0]]))
    assert town01.lanes[int(p.lane_index[0])].type == "sidewalk"
    assert town01.lanes[int(q.lane_index[0])].type == "driving"


def _graph_and_chain(net):
    """The LaneGraph of Town01 and a lane p outside junctions whose successor q is a junction lane."""
    g = LaneGraph.for_network(net, NpcConfig())
    for p in range(len(g.length)):
        q = g.succ[p, 0]
        if not g.junction[p] and q >= 0 and g.junction[q] and g.length[p] > 60.0 and g.n_succ[q] > 0:
            return g, p, q, g.succ[q, 0]
    raise AssertionError("Town01 has a straight lane into a junction")


def test_leaders_follow_lane_order_break_ties_by_index_and_stop_at_unheld_junctions(town01):
    g, p, q, r = _graph_and_chain(town01)
    # NPCs 0..2 on p: 0 at 10 m, 1 and 2 both at 30 m (a tie: the lower index is behind); 3 on q; 4 on r
    lane = np.array([p, p, p, q, r])
    u = np.array([10.0, 30.0, 30.0, 5.0, 12.0])
    v = np.array([5.0, 6.0, 7.0, 8.0, 9.0])
    qs = np.array([q, q, q, r, -1])
    rs = np.array([r, r, r, -1, -1])
    hold = np.array([-1, -1, -1, q, -1])
    ext = np.full(5, 2.0)
    gap, lead = kernels._leaders(g.tables, lane, u, v, qs, rs, hold, ext)
    assert gap[0] == pytest.approx((30.0 - 2.0) - (10.0 + 2.0)) and lead[0] == 6.0  # 1 ahead of 0
    assert gap[1] == pytest.approx(-4.0) and lead[1] == 7.0  # 2 ahead of 1 (same u, higher index)
    # 2 is the front of p: its leader is 3 on the successor q, but q is a junction lane it does not hold, so the
    # stop line 0.5 m before p's end is nearer
    to_end = g.length[p] - 32.0
    assert gap[2] == pytest.approx(to_end - 0.5) and lead[2] == 0.0
    # 3 holds nothing itself but is inside q (no stop line for it): its leader is 4 on r
    assert gap[3] == pytest.approx(g.length[q] - 7.0 + (12.0 - 2.0)) and lead[3] == 9.0
    # 4 has no next lane: a dead end stops it at its lane's end
    assert gap[4] == pytest.approx(g.length[r] - 14.0) and lead[4] == 0.0


def test_junction_requests_only_the_front_vehicle_nearest_the_stop_line_first(town01):
    g, p, q, r = _graph_and_chain(town01)
    L = g.length[p]
    lane = np.array([p, p, q])
    u = np.array([L - 20.0, L - 5.0, 3.0])
    qs = np.array([q, q, r])
    hold = np.full(3, -1)
    ext = np.full(3, 2.0)
    got = kernels.junction_requests(g.tables, lane, u, qs, hold, ext, NpcConfig().junction_approach)
    assert got.tolist() == [1]  # 0 is behind 1 on the same lane; 2 is already inside the junction
    hold[1] = q
    assert kernels.junction_requests(g.tables, lane, u, qs, hold, ext, 30.0).tolist() == []


def test_nearest_on_polyline_returns_the_first_nearest_segment_and_its_foot():
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    i, t, fx, fy, len2, d2 = nearest_on_polyline(pts, 0, 3, 4.0, 3.0)
    assert (i, t, fx, fy, len2, d2) == (0, 0.4, 4.0, 0.0, 100.0, 9.0)
    # (5, 5) is 5 m from all three segments: the first wins
    assert nearest_on_polyline(pts, 0, 3, 5.0, 5.0)[0] == 0
    assert nearest_on_polyline(pts, 1, 3, 5.0, 5.0)[0] == 1  # the window starts at segment 1
