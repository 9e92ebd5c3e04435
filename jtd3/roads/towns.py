"""Procedural towns, generated as OpenDRIVE text and loaded through the same reader as Town01.

``grid3`` / ``grid4``: a seeded random grid of N x N intersections. Block lengths are drawn per row and column,
some streets are removed at random (every intersection keeps at least two streets and the network stays
connected), so the towns have four-way crossings, T-junctions and corners. Every street is a two-way road
like Town01's: one 4 m driving lane per direction, a 0.3 m shoulder with a curb, a 4 m sidewalk, a broken
centre line. Junctions hold one connecting road per movement (straight, left, right; no U-turns), with only
the driving lane, as CARLA's maps do.

:func:`geometry_zoo_xodr` writes a map with every planView geometry kind (line, arc, spiral, poly3,
paramPoly3 in both parameter ranges), sloped laneOffset and widths, and several lane sections. It is not a
town to drive in; the CARLA-oracle test uses it to check the reader's geometry against CARLA's own code.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from jtd3 import DATA_DIR
from jtd3.roads.network import RoadNetwork
from jtd3.roads.opendrive import _parse_geometry

__all__ = ["PROCEDURAL_TOWNS", "available_towns", "geometry_zoo_xodr", "load_town", "procedural_town_xodr"]

PROCEDURAL_TOWNS = ("grid3", "grid4")

_GRID_SIZE = {"grid3": 3, "grid4": 4}
_BLOCK_RANGE = (70.0, 130.0)  # metres between neighbouring intersections (centre to centre)
_JUNCTION_HALF = 10.0  # metres from an intersection centre to where its streets begin
_DROP_FRACTION = 0.25  # share of streets the generator tries to remove
_LANE_WIDTH = 4.0
_SHOULDER_WIDTH = 0.3
_SIDEWALK_WIDTH = 4.0
_SPEED_KMH = 30.0
_ORIGIN = (0.0, 0.0)


def _header(name: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<OpenDRIVE>\n'
        f'    <header revMajor="1" revMinor="4" name="{name}" version="1" vendor="jtd3"/>\n'
    )


def _lane(lid: int, kind: str, width: float, mark: str, color: str = "white", lane_change: str = "none",
          pred: int | None = None, succ: int | None = None, b: float = 0.0) -> str:
    link = ""
    if pred is not None or succ is not None:
        link = "<link>"
        if pred is not None:
            link += f'<predecessor id="{pred}"/>'
        if succ is not None:
            link += f'<successor id="{succ}"/>'
        link += "</link>"
    return (
        f'<lane id="{lid}" type="{kind}" level="false">{link}'
        f'<width sOffset="0" a="{width!r}" b="{b!r}" c="0" d="0"/>'
        f'<roadMark sOffset="0" type="{mark}" material="standard" color="{color}" width="0.15" laneChange="{lane_change}"/>'
        "</lane>"
    )


def _centre_lane(mark: str = "broken", color: str = "yellow", lane_change: str = "both") -> str:
    return (
        '<center><lane id="0" type="none" level="false">'
        f'<roadMark sOffset="0" type="{mark}" material="standard" color="{color}" width="0.125" laneChange="{lane_change}"/>'
        "</lane></center>"
    )


def _street_lanes() -> str:
    left = (
        _lane(3, "sidewalk", _SIDEWALK_WIDTH, "none")
        + _lane(2, "shoulder", _SHOULDER_WIDTH, "curb")
        + _lane(1, "driving", _LANE_WIDTH, "none")
    )
    right = (
        _lane(-1, "driving", _LANE_WIDTH, "none")
        + _lane(-2, "shoulder", _SHOULDER_WIDTH, "curb")
        + _lane(-3, "sidewalk", _SIDEWALK_WIDTH, "none")
    )
    return (
        '<lanes><laneOffset s="0" a="0" b="0" c="0" d="0"/><laneSection s="0">'
        f"<left>{left}</left>{_centre_lane()}<right>{right}</right></laneSection></lanes>"
    )


def _road(rid: int, length: float, junction: int, link: str, geometry: str, lanes: str, speed: bool = True) -> str:
    typ = f'<type s="0" type="town"><speed max="{_SPEED_KMH:g}" unit="km/h"/></type>' if speed else ""
    return (
        f'    <road name="Road {rid}" length="{length!r}" id="{rid}" junction="{junction}">'
        f"<link>{link}</link>{typ}<planView>{geometry}</planView>"
        '<elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/></elevationProfile>'
        f"{lanes}</road>\n"
    )


def _geom(s: float, x: float, y: float, hdg: float, length: float, body: str) -> str:
    return f'<geometry s="{s!r}" x="{x!r}" y="{y!r}" hdg="{hdg!r}" length="{length!r}">{body}</geometry>'


def _grid_edges(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    edges = []
    for r in range(n):
        for c in range(n):
            i = r * n + c
            if c + 1 < n:
                edges.append((i, i + 1))
            if r + 1 < n:
                edges.append((i, i + n))
    target = int(round(_DROP_FRACTION * len(edges)))
    order = rng.permutation(len(edges))
    kept = set(range(len(edges)))
    removed = 0
    for k in order:
        if removed >= target:
            break
        a, b = edges[k]
        trial = kept - {int(k)}
        deg = np.zeros(n * n, dtype=int)
        for e in trial:
            deg[edges[e][0]] += 1
            deg[edges[e][1]] += 1
        if deg[a] < 2 or deg[b] < 2 or not _connected(n * n, [edges[e] for e in trial]):
            continue
        kept = trial
        removed += 1
    return [edges[e] for e in sorted(kept)]


def _connected(n_nodes: int, edges: list[tuple[int, int]]) -> bool:
    adj: dict[int, list[int]] = {i: [] for i in range(n_nodes)}
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    seen = {0}
    stack = [0]
    while stack:
        for m in adj[stack.pop()]:
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return len(seen) == n_nodes


def procedural_town_xodr(name: str, seed: int) -> str:
    """OpenDRIVE text of procedural town ``name`` (one of :data:`PROCEDURAL_TOWNS`) for layout ``seed``."""
    if name not in _GRID_SIZE:
        raise ValueError(f"unknown procedural town {name!r}; choices: {', '.join(PROCEDURAL_TOWNS)}")
    n = _GRID_SIZE[name]
    rng = np.random.default_rng(seed)
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(*_BLOCK_RANGE, size=n - 1))]) + _ORIGIN[0]
    ys = np.concatenate([[0.0], -np.cumsum(rng.uniform(*_BLOCK_RANGE, size=n - 1))]) + _ORIGIN[1]
    node_xy = np.array([(xs[c], ys[r]) for r in range(n) for c in range(n)])
    edges = _grid_edges(n, rng)
    J = _JUNCTION_HALF
    out = [_header(f"{name}-seed{seed}")]
    # approaches[node] = list of (road id, unit vector from node towards the road, node is the road's end?)
    approaches: dict[int, list[tuple[int, np.ndarray, bool]]] = {i: [] for i in range(n * n)}
    for rid, (a, b) in enumerate(edges):
        pa, pb = node_xy[a], node_xy[b]
        d = pb - pa
        dist = float(np.hypot(*d))
        u = d / dist
        start = pa + J * u
        length = dist - 2 * J
        hdg = math.atan2(u[1], u[0])
        link = f'<predecessor elementType="junction" elementId="{500 + a}"/><successor elementType="junction" elementId="{500 + b}"/>'
        geom = _geom(0.0, float(start[0]), float(start[1]), hdg, length, "<line/>")
        out.append(_road(rid, length, -1, link, geom, _street_lanes()))
        approaches[a].append((rid, u, False))
        approaches[b].append((rid, -u, True))
    junctions = []
    next_id = 1000
    for node in range(n * n):
        conns = []
        c = node_xy[node]
        for rin, uin, in_ends in approaches[node]:
            for rout, uout, out_ends in approaches[node]:
                if rout == rin:
                    continue
                p_in = c + J * uin
                h_in = -uin
                hdg = math.atan2(h_in[1], h_in[0])
                cross = h_in[0] * uout[1] - h_in[1] * uout[0]
                if abs(cross) < 1e-9:
                    length = 2 * J
                    geom = _geom(0.0, float(p_in[0]), float(p_in[1]), hdg, length, "<line/>")
                else:
                    k = (1.0 if cross > 0 else -1.0) / J
                    length = 0.5 * math.pi * J
                    geom = _geom(0.0, float(p_in[0]), float(p_in[1]), hdg, length, f'<arc curvature="{k!r}"/>')
                lane_in = -1 if in_ends else 1
                lane_out = 1 if out_ends else -1
                cid = next_id
                next_id += 1
                link = (
                    f'<predecessor elementType="road" elementId="{rin}" contactPoint="{"end" if in_ends else "start"}"/>'
                    f'<successor elementType="road" elementId="{rout}" contactPoint="{"end" if out_ends else "start"}"/>'
                )
                lanes = (
                    '<lanes><laneOffset s="0" a="0" b="0" c="0" d="0"/><laneSection s="0">'
                    f'{_centre_lane("none", "white", "none")}<right>'
                    + _lane(-1, "driving", _LANE_WIDTH, "none", pred=lane_in, succ=lane_out)
                    + "</right></laneSection></lanes>"
                )
                out.append(_road(cid, length, 500 + node, link, geom, lanes, speed=False))
                conns.append(
                    f'<connection id="{len(conns)}" incomingRoad="{rin}" connectingRoad="{cid}" contactPoint="start">'
                    f'<laneLink from="{lane_in}" to="-1"/></connection>'
                )
        junctions.append(f'    <junction id="{500 + node}" name="junction{500 + node}">{"".join(conns)}</junction>\n')
    out.extend(junctions)
    out.append("</OpenDRIVE>\n")
    return "".join(out)


def geometry_zoo_xodr() -> str:
    """A small map exercising every geometry kind, sloped offsets/widths and multiple lane sections."""
    out = [_header("geometry-zoo")]

    def lanes_two_sections(length: float, b_width: float) -> str:
        s1 = 0.45 * length
        sec = lambda s, b: (  # noqa: E731
            f'<laneSection s="{s!r}"><left>'
            + _lane(2, "sidewalk", 3.0, "none", pred=2, succ=2)
            + _lane(1, "driving", 3.5, "solid", pred=1, succ=1, b=b)
            + f"</left>{_centre_lane('solid solid', 'yellow', 'none')}<right>"
            + _lane(-1, "driving", 3.5, "broken", lane_change="both", pred=-1, succ=-1, b=b)
            + _lane(-2, "driving", 3.25, "curb", pred=-2, succ=-2)
            + _lane(-3, "sidewalk", 3.0, "none", pred=-3, succ=-3)
            + "</right></laneSection>"
        )
        return (
            '<lanes><laneOffset s="0" a="0.2" b="0.01" c="0" d="0"/>'
            + sec(0.0, b_width)
            + sec(s1, 0.0)
            + "</lanes>"
        )

    # Road 1: line, spiral, arc, spiral, line.
    g = []
    s = 0.0
    x, y, h = 0.0, 0.0, 0.0
    pieces = [("line", 10.0, ""), ("spiral", 20.0, (0.0, 0.04)), ("arc", 15.0, 0.04), ("spiral", 20.0, (0.04, 0.0)), ("line", 10.0, "")]
    import xml.etree.ElementTree as ET

    for kind, length, p in pieces:
        if kind == "line":
            body = "<line/>"
        elif kind == "arc":
            body = f'<arc curvature="{p!r}"/>'
        else:
            body = f'<spiral curvStart="{p[0]!r}" curvEnd="{p[1]!r}"/>'
        text = _geom(s, x, y, h, length, body)
        g.append(text)
        geo = _parse_geometry(ET.fromstring(text))
        ex, ey, eh = geo.evaluate(np.array([length]))
        x, y, h = float(ex[0]), float(ey[0]), float(eh[0])
        s += length
    out.append(_road(1, s, -1, "", "".join(g), lanes_two_sections(s, 0.02)))
    # Road 2: poly3.
    geom = _geom(0.0, 0.0, -80.0, 0.1, 40.0, '<poly3 a="0" b="0" c="0.004" d="-0.00005"/>')
    out.append(_road(2, 40.0, -1, "", geom, lanes_two_sections(40.0, -0.01)))
    # Road 3: paramPoly3 over arc length; road 4: normalised.
    geom = _geom(0.0, 0.0, -160.0, -0.2, 45.0,
                 '<paramPoly3 aU="0" bU="1" cU="-0.001" dU="0" aV="0" bV="0" cV="0.01" dV="-0.0001" pRange="arcLength"/>')
    out.append(_road(3, 45.0, -1, "", geom, lanes_two_sections(45.0, 0.015)))
    geom = _geom(0.0, 0.0, -240.0, 0.3, 40.36685,
                 '<paramPoly3 aU="0" bU="40" cU="0" dU="0" aV="0" bV="0" cV="8" dV="-3" pRange="normalized"/>')
    out.append(_road(4, 40.36685, -1, "", geom, lanes_two_sections(40.36685, 0.0)))
    out.append("</OpenDRIVE>\n")
    return "".join(out)


def available_towns() -> tuple[str, ...]:
    """Town names :func:`load_town` accepts: ``town01`` and procedural ``grid<N>`` towns (see jtd3.roads.towns)."""
    return ("town01",) + PROCEDURAL_TOWNS


@functools.lru_cache(maxsize=8)
def load_town(name: str, seed: int = 0) -> RoadNetwork:
    """Load a town by name: ``town01`` (CARLA's Town01, shipped) or a procedural town (``seed`` picks its layout).

    Cached per (name, seed): the network is immutable after construction.
    """
    if name == "town01":
        text = (DATA_DIR / "Town01.xodr").read_text(encoding="utf-8")
        return RoadNetwork.from_opendrive(text, name="town01")
    if name in PROCEDURAL_TOWNS:
        return RoadNetwork.from_opendrive(procedural_town_xodr(name, seed), name=f"{name}-seed{seed}")
    raise ValueError(f"unknown town {name!r}; choices: {', '.join(available_towns())}")
