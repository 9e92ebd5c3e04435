"""OpenDRIVE 1.4-1.6 reader: XML -> plain dataclasses, and vectorised reference-line geometry.

Only what the simulator and CARLA's waypoint API need is read: the plan view (``line``, ``arc``,
``spiral``, ``poly3``, ``paramPoly3``), elevation, ``laneOffset``, lane sections with lane types, widths,
road marks and lane links, road links, junction connections, speed records, and the positions of signals and
objects (used as static obstacles).

Frames: everything in this module is in the **OpenDRIVE** frame (right-handed, x east, y north, heading ``hdg``
in radians counter-clockwise from +x, lateral coordinate ``t`` positive to the left). The conversion to CARLA's
frame (y south, yaw in degrees clockwise) happens in one place, :mod:`jtd3.roads.network`, exactly as CARLA does it
(``y -> -y``, ``yaw = -degrees(hdg)``).
"""

from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET

import numpy as np

__all__ = [
    "Connection",
    "Geometry",
    "Junction",
    "Lane",
    "LaneSection",
    "OpenDrive",
    "Road",
    "RoadMark",
    "parse_opendrive",
]

# Step of the arc-length tables of spiral/poly3/paramPoly3 geometries (metres). The tables are integrated with
# the trapezoidal rule, whose error at this step is far below a millimetre for road curvatures.
_TABLE_STEP = 0.01
_GEOMETRY_KINDS = ("line", "arc", "spiral", "poly3", "paramPoly3")


@dataclasses.dataclass(frozen=True)
class RoadMark:
    """A ``<roadMark>`` record of one lane, valid from ``s_offset`` (relative to its lane section start)."""

    s_offset: float
    type: str  # OpenDRIVE name: "none", "solid", "broken", "solid solid", "curb", ...
    color: str
    width: float
    lane_change: str  # "none", "increase", "decrease", "both"


@dataclasses.dataclass(frozen=True)
class Lane:
    """One ``<lane>`` of a lane section. ``widths`` rows are (sOffset, a, b, c, d), sOffset relative to the section."""

    id: int
    type: str
    widths: np.ndarray  # (K, 5)
    marks: tuple[RoadMark, ...]
    predecessor: int | None
    successor: int | None

    def width(self, ds: np.ndarray | float) -> np.ndarray:
        """Lane width (m) at ``ds`` metres after the section start (vectorised)."""
        return _poly_eval(self.widths, np.asarray(ds, dtype=np.float64))[0]

    def width_slope(self, ds: np.ndarray | float) -> np.ndarray:
        """d(width)/ds at ``ds`` metres after the section start (vectorised)."""
        return _poly_eval(self.widths, np.asarray(ds, dtype=np.float64))[1]

    def mark_at(self, ds: float) -> RoadMark | None:
        """The road mark in force ``ds`` metres after the section start (``None`` when the lane has none)."""
        current = None
        for m in self.marks:
            if m.s_offset <= ds:
                current = m
            else:
                break
        return current if current is not None else (self.marks[0] if self.marks else None)


@dataclasses.dataclass(frozen=True)
class LaneSection:
    s: float  # start, metres along the road
    s_end: float  # end (the next section's start or the road length)
    lanes: dict[int, Lane]  # every lane id, centre lane 0 included

    def left_ids(self) -> list[int]:
        """Positive lane ids, innermost first."""
        return sorted(i for i in self.lanes if i > 0)

    def right_ids(self) -> list[int]:
        """Negative lane ids, innermost first."""
        return sorted((i for i in self.lanes if i < 0), reverse=True)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """One ``<geometry>`` record; ``params`` holds the kind's attributes."""

    s: float
    x: float
    y: float
    hdg: float
    length: float
    kind: str
    params: dict
    # For spiral/poly3/paramPoly3: arc-length table (ds) -> (x, y, hdg) in the record's local frame.
    table: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def evaluate(self, ds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Position (x, y) and heading (rad) at arc length ``ds`` from the record's start (OpenDRIVE frame)."""
        ds = np.asarray(ds, dtype=np.float64)
        if self.kind == "line":
            c, s = math.cos(self.hdg), math.sin(self.hdg)
            return self.x + ds * c, self.y + ds * s, np.full_like(ds, self.hdg)
        if self.kind == "arc":
            k = self.params["curvature"]
            if abs(k) < 1e-12:
                c, s = math.cos(self.hdg), math.sin(self.hdg)
                return self.x + ds * c, self.y + ds * s, np.full_like(ds, self.hdg)
            h = self.hdg + k * ds
            x = self.x + (np.sin(h) - math.sin(self.hdg)) / k
            y = self.y - (np.cos(h) - math.cos(self.hdg)) / k
            return x, y, h
        assert self.table is not None
        tds, tu, tv, th = self.table
        u = np.interp(ds, tds, tu)
        v = np.interp(ds, tds, tv)
        h = np.interp(ds, tds, th)
        # Beyond the table (a paramPoly3 whose declared length exceeds its arc length) CARLA extrapolates the
        # last table interval linearly; do the same.
        beyond = ds > tds[-1]
        if np.any(beyond):
            r = (ds[beyond] - tds[-2]) / (tds[-1] - tds[-2])
            u[beyond] = tu[-2] + r * (tu[-1] - tu[-2])
            v[beyond] = tv[-2] + r * (tv[-1] - tv[-2])
            h[beyond] = th[-2] + r * (th[-1] - th[-2])
        c, s = math.cos(self.hdg), math.sin(self.hdg)
        return self.x + c * u - s * v, self.y + s * u + c * v, self.hdg + h


@dataclasses.dataclass(frozen=True)
class Road:
    id: int
    name: str
    length: float
    junction: int  # -1 when the road is not a junction's connecting road
    predecessor: tuple[str, int, str | None] | None  # (elementType, elementId, contactPoint)
    successor: tuple[str, int, str | None] | None
    geometries: tuple[Geometry, ...]
    lane_offsets: np.ndarray  # (K, 5): s, a, b, c, d
    elevations: np.ndarray  # (K, 5): s, a, b, c, d
    sections: tuple[LaneSection, ...]
    speeds: tuple[tuple[float, float], ...]  # (s, max speed in m/s); empty when the file gives none
    poles: tuple[tuple[float, float, str], ...]  # (s, t, name) of signals and objects

    @property
    def is_junction(self) -> bool:
        return self.junction >= 0

    def reference(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reference line (x, y, hdg) at ``s`` (clamped to [0, length]); vectorised, OpenDRIVE frame."""
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        starts = np.array([g.s for g in self.geometries])
        idx = np.clip(np.searchsorted(starts, s, side="right") - 1, 0, len(starts) - 1)
        x = np.empty_like(s)
        y = np.empty_like(s)
        h = np.empty_like(s)
        for i in np.unique(idx):
            g = self.geometries[i]
            m = idx == i
            x[m], y[m], h[m] = g.evaluate(s[m] - g.s)
        return x, y, h

    def lane_offset(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """laneOffset (m, positive left) and its slope at ``s``."""
        return _poly_eval(self.lane_offsets, np.asarray(s, dtype=np.float64), absolute=True)

    def elevation(self, s: np.ndarray) -> np.ndarray:
        return _poly_eval(self.elevations, np.asarray(s, dtype=np.float64), absolute=True)[0]

    def section_index(self, s: float) -> int:
        """Index of the lane section containing ``s`` (the last one whose start is <= s)."""
        idx = 0
        for i, sec in enumerate(self.sections):
            if sec.s <= s + 1e-9:
                idx = i
        return idx

    def speed_limit(self, s: float) -> float | None:
        """Speed limit (m/s) at ``s``, or ``None`` when the road has no ``<type><speed>`` record."""
        out = None
        for s0, v in self.speeds:
            if s0 <= s + 1e-9:
                out = v
        if out is None and self.speeds:
            out = self.speeds[0][1]
        return out


@dataclasses.dataclass(frozen=True)
class Connection:
    id: int
    incoming_road: int
    connecting_road: int
    contact_point: str  # "start" or "end"
    lane_links: tuple[tuple[int, int], ...]  # (from, to)


@dataclasses.dataclass(frozen=True)
class Junction:
    id: int
    connections: tuple[Connection, ...]


@dataclasses.dataclass(frozen=True)
class OpenDrive:
    roads: dict[int, Road]
    junctions: dict[int, Junction]


# ----------------------------------------------------------------------------------------------------------
# Polynomials


def _poly_eval(rows: np.ndarray, s: np.ndarray, absolute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise cubic (rows: start, a, b, c, d) value and slope at ``s``; a missing table evaluates to 0."""
    s = np.asarray(s, dtype=np.float64)
    if rows.shape[0] == 0:
        return np.zeros_like(s), np.zeros_like(s)
    idx = np.clip(np.searchsorted(rows[:, 0], s + 1e-9, side="right") - 1, 0, rows.shape[0] - 1)
    r = rows[idx]
    u = s - r[..., 0]
    a, b, c, d = r[..., 1], r[..., 2], r[..., 3], r[..., 4]
    return a + u * (b + u * (c + u * d)), b + u * (2 * c + 3 * u * d)


# ----------------------------------------------------------------------------------------------------------
# Geometry tables


def _integrate_table(p: np.ndarray, du: np.ndarray, dv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arc length along a parametric curve with derivatives (du, dv) sampled at parameters p."""
    speed = np.hypot(du, dv)
    ds = np.concatenate([[0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]) * np.diff(p))])
    return ds, np.arctan2(dv, du), speed


def _spiral_table(length: float, c0: float, c1: float) -> tuple[np.ndarray, ...]:
    n = max(int(math.ceil(length / _TABLE_STEP)), 16) + 1
    ds = np.linspace(0.0, length, n)
    h = c0 * ds + (c1 - c0) * ds**2 / (2.0 * length)
    cu, cv = np.cos(h), np.sin(h)
    step = np.diff(ds)
    u = np.concatenate([[0.0], np.cumsum(0.5 * (cu[1:] + cu[:-1]) * step)])
    v = np.concatenate([[0.0], np.cumsum(0.5 * (cv[1:] + cv[:-1]) * step)])
    return ds, u, v, h


def _param_poly_table(length: float, cu: tuple, cv: tuple, p_max: float) -> tuple[np.ndarray, ...]:
    """Table for u(p), v(p) cubics with p in [0, p_max], re-parametrised by arc length."""
    n = max(int(math.ceil(length / _TABLE_STEP)), 16) * 2 + 1
    p = np.linspace(0.0, p_max, n)
    u = cu[0] + p * (cu[1] + p * (cu[2] + p * cu[3]))
    v = cv[0] + p * (cv[1] + p * (cv[2] + p * cv[3]))
    du = cu[1] + p * (2 * cu[2] + 3 * p * cu[3])
    dv = cv[1] + p * (2 * cv[2] + 3 * p * cv[3])
    ds, h, _ = _integrate_table(p, du, dv)
    return ds, u, v, h


# ----------------------------------------------------------------------------------------------------------
# XML parsing


def _f(el: ET.Element, name: str, default: float | None = None) -> float:
    v = el.get(name)
    if v is None:
        if default is None:
            raise ValueError(f"OpenDRIVE: <{el.tag}> lacks attribute {name!r}")
        return default
    return float(v)


def _coeffs(el: ET.Element, s_name: str) -> list[float]:
    return [_f(el, s_name, 0.0), _f(el, "a", 0.0), _f(el, "b", 0.0), _f(el, "c", 0.0), _f(el, "d", 0.0)]


def _table(rows: list[list[float]]) -> np.ndarray:
    if not rows:
        return np.zeros((0, 5))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return arr[np.argsort(arr[:, 0], kind="stable")]


def _link(el: ET.Element | None) -> tuple[str, int, str | None] | None:
    if el is None:
        return None
    return (el.get("elementType", "road"), int(el.get("elementId")), el.get("contactPoint"))


def _parse_geometry(g: ET.Element) -> Geometry:
    s, x, y, hdg, length = _f(g, "s"), _f(g, "x"), _f(g, "y"), _f(g, "hdg"), _f(g, "length")
    child = next((c for c in g if c.tag in _GEOMETRY_KINDS), None)
    if child is None:
        kinds = [c.tag for c in g]
        raise ValueError(f"OpenDRIVE: unsupported geometry {kinds} at s={s}; supported: {', '.join(_GEOMETRY_KINDS)}")
    kind = child.tag
    params: dict = {}
    table = None
    if kind == "arc":
        params["curvature"] = _f(child, "curvature")
    elif kind == "spiral":
        c0, c1 = _f(child, "curvStart"), _f(child, "curvEnd")
        params.update(curvStart=c0, curvEnd=c1)
        table = _spiral_table(length, c0, c1)
    elif kind == "poly3":
        a, b, c, d = (_f(child, k, 0.0) for k in "abcd")
        params.update(a=a, b=b, c=c, d=d)
        # u is the local abscissa; extend the parameter range until the arc length covers `length`.
        u_max = length
        for _ in range(8):
            tab = _param_poly_table(length, (0.0, 1.0, 0.0, 0.0), (a, b, c, d), u_max)
            if tab[0][-1] >= length:
                break
            u_max *= 1.5
        table = tab
    else:  # paramPoly3
        cu = tuple(_f(child, k, 0.0) for k in ("aU", "bU", "cU", "dU"))
        cv = tuple(_f(child, k, 0.0) for k in ("aV", "bV", "cV", "dV"))
        p_range = child.get("pRange", "normalized")
        if p_range not in ("arcLength", "normalized"):
            raise ValueError(f"OpenDRIVE: paramPoly3 pRange={p_range!r}; expected 'arcLength' or 'normalized'")
        params.update(pRange=p_range, u=cu, v=cv)
        table = _param_poly_table(length, cu, cv, length if p_range == "arcLength" else 1.0)
    return Geometry(s, x, y, hdg, length, kind, params, table)


def _parse_lane(el: ET.Element) -> Lane:
    lid = int(el.get("id"))
    widths = _table([_coeffs(w, "sOffset") for w in el.findall("width")])
    if widths.shape[0] == 0 and lid != 0:
        # OpenDRIVE also allows <border>; CARLA's maps use <width>. A lane without width is zero-wide.
        widths = np.zeros((1, 5))
    marks = []
    for m in el.findall("roadMark"):
        marks.append(
            RoadMark(
                s_offset=_f(m, "sOffset", 0.0),
                type=m.get("type", "none"),
                color=m.get("color", "standard"),
                width=_f(m, "width", 0.0),
                lane_change=m.get("laneChange", "both"),
            )
        )
    marks.sort(key=lambda r: r.s_offset)
    link = el.find("link")
    pred = succ = None
    if link is not None:
        p, q = link.find("predecessor"), link.find("successor")
        pred = int(p.get("id")) if p is not None else None
        succ = int(q.get("id")) if q is not None else None
    return Lane(lid, el.get("type", "none"), widths, tuple(marks), pred, succ)


_SPEED_UNITS = {"m/s": 1.0, "km/h": 1.0 / 3.6, "mph": 0.44704}


def _parse_road(r: ET.Element) -> Road:
    rid = int(r.get("id"))
    length = _f(r, "length")
    link = r.find("link")
    pred = _link(link.find("predecessor")) if link is not None else None
    succ = _link(link.find("successor")) if link is not None else None
    plan = r.find("planView")
    if plan is None or not plan.findall("geometry"):
        raise ValueError(f"OpenDRIVE: road {rid} has no planView geometry")
    geoms = tuple(sorted((_parse_geometry(g) for g in plan.findall("geometry")), key=lambda g: g.s))
    lanes_el = r.find("lanes")
    if lanes_el is None:
        raise ValueError(f"OpenDRIVE: road {rid} has no <lanes>")
    offsets = _table([_coeffs(o, "s") for o in lanes_el.findall("laneOffset")])
    elev_el = r.find("elevationProfile")
    elevs = _table([_coeffs(e, "s") for e in elev_el.findall("elevation")]) if elev_el is not None else _table([])
    sec_els = sorted(lanes_el.findall("laneSection"), key=lambda e: _f(e, "s"))
    sections = []
    for i, sec in enumerate(sec_els):
        s0 = _f(sec, "s")
        s1 = _f(sec_els[i + 1], "s") if i + 1 < len(sec_els) else length
        lanes: dict[int, Lane] = {}
        for side in ("left", "center", "right"):
            side_el = sec.find(side)
            if side_el is None:
                continue
            for lane_el in side_el.findall("lane"):
                lane = _parse_lane(lane_el)
                lanes[lane.id] = lane
        sections.append(LaneSection(s0, s1, lanes))
    speeds = []
    for t in r.findall("type"):
        sp = t.find("speed")
        if sp is not None and sp.get("max") not in (None, "no limit", "undefined"):
            unit = sp.get("unit", "m/s")
            if unit not in _SPEED_UNITS:
                raise ValueError(f"OpenDRIVE: road {rid} speed unit {unit!r}; expected one of {list(_SPEED_UNITS)}")
            speeds.append((_f(t, "s", 0.0), float(sp.get("max")) * _SPEED_UNITS[unit]))
    poles = []
    for tag in ("signals/signal", "objects/object"):
        for el in r.findall(tag):
            if el.get("s") is not None and el.get("t") is not None:
                poles.append((_f(el, "s"), _f(el, "t"), el.get("name", tag)))
    return Road(
        id=rid,
        name=r.get("name", ""),
        length=length,
        junction=int(r.get("junction", "-1")),
        predecessor=pred,
        successor=succ,
        geometries=geoms,
        lane_offsets=offsets,
        elevations=elevs,
        sections=tuple(sections),
        speeds=tuple(sorted(speeds)),
        poles=tuple(poles),
    )


def parse_opendrive(text: str) -> OpenDrive:
    """Parse OpenDRIVE XML text. Raises ``ValueError`` for malformed or unsupported content."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"OpenDRIVE text is not valid XML: {e}") from None
    if root.tag != "OpenDRIVE":
        raise ValueError(f"OpenDRIVE: root element is <{root.tag}>, expected <OpenDRIVE>")
    roads = {}
    for r in root.findall("road"):
        road = _parse_road(r)
        if road.id in roads:
            raise ValueError(f"OpenDRIVE: duplicate road id {road.id}")
        roads[road.id] = road
    if not roads:
        raise ValueError("OpenDRIVE: no <road> elements")
    junctions = {}
    for j in root.findall("junction"):
        conns = []
        for c in j.findall("connection"):
            links = tuple((int(ll.get("from")), int(ll.get("to"))) for ll in c.findall("laneLink"))
            conns.append(
                Connection(
                    id=int(c.get("id", "0")),
                    incoming_road=int(c.get("incomingRoad")),
                    connecting_road=int(c.get("connectingRoad")),
                    contact_point=c.get("contactPoint", "start"),
                    lane_links=links,
                )
            )
        junctions[int(j.get("id"))] = Junction(int(j.get("id")), tuple(conns))
    return OpenDrive(roads, junctions)
