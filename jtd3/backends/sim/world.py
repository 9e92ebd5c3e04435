"""``SimWorld``: the embedded backend (``jtd3.backends.base.Backend``) tying road network, dynamics, traffic,
events and cameras together. Synchronous: one ``step`` is one fixed tick of ``config.dt`` seconds.

Collisions stop the ego: when its box would overlap a vehicle or a static obstacle after a tick, it is put back
at its pose before the tick with zero speed, and a ``CollisionEvent`` is reported (as CARLA's collision sensor
reports a hit; the physical bounce of a real simulator is not modelled).
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from jtd3.backends import obstacle
from jtd3.backends.base import (
    ActorState, CollisionEvent, LaneInvasionEvent, Pose, Snapshot, VehicleControl, Vehicles,
)
from jtd3.backends.sim import dynamics
from jtd3.backends.sim.config import SimConfig
from jtd3.backends.sim.events import box_corners, crossed_markings, footprint_points, obb_overlap, relative_impulse
from jtd3.backends.sim.render import BUILDING, FrontCamera, build_town_raster, render_birdeye, vehicle_grey
from jtd3.backends.sim.traffic import Traffic
from jtd3.roads.network import RoadNetwork
from jtd3.roads.towns import load_town

__all__ = ["EGO_ID", "SimWorld"]

EGO_ID = 1000  # actor id of the ego; NPCs get EGO_ID + 1, + 2, ...


class SimWorld:
    """The embedded CARLA-like world. ``SimWorld(SimConfig())`` loads the town; ``reset`` starts an episode."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = cfg = SimConfig() if config is None else config
        if not isinstance(cfg, SimConfig):
            raise TypeError(f"config must be a SimConfig, got {type(cfg).__name__}")
        self.network: RoadNetwork = load_town(cfg.town, cfg.town_seed)
        self.raster = build_town_raster(self.network, cfg.render)
        self.traffic = Traffic(self.network, cfg.npc)
        self._cameras: dict[tuple[int, int], FrontCamera] = {}
        self._kind = cfg.camera.kind
        self.route: np.ndarray | None = None
        self.ego: dynamics.EgoState | None = None
        self.frame = 0
        self.offroad = False
        self._closed = False
        self._tick_deadline = 0.0  # time.monotonic() before which the next tick may not return (min_step_s)
        v = cfg.vehicle
        self._hl, self._hw, self._hh = 0.5 * v.length, 0.5 * v.width, 0.5 * v.height
        if not 0.0 < cfg.obstacle.mount_z < v.height:
            raise ValueError(f"sim.obstacle.mount_z = {cfg.obstacle.mount_z} must lie within the vehicle's height "
                             f"(0, {v.height}): the embedded obstacle sweep is computed in the ground plane")

    # ------------------------------------------------------------------------------------------------------
    # Backend protocol

    @property
    def opendrive(self) -> str:
        return self.network.opendrive_text

    def reset(self, spawn: Pose, num_vehicles: int, seed: int) -> Snapshot:
        """Spawn the ego at ``spawn`` (standing) and ``num_vehicles`` NPCs (seeded by ``seed``), tick once."""
        if not all(math.isfinite(float(v)) for v in (spawn.x, spawn.y, spawn.yaw)):
            raise ValueError(f"spawn pose must be finite, got {spawn}")
        if isinstance(num_vehicles, bool) or not isinstance(num_vehicles, (int, np.integer)) or num_vehicles < 0:
            raise ValueError(f"num_vehicles must be an integer >= 0, got {num_vehicles!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self._closed = False
        rng = np.random.default_rng(int(seed))
        self.ego = dynamics.EgoState(float(spawn.x), float(spawn.y), float(spawn.yaw))
        self.traffic.reset(int(num_vehicles), (self.ego.x, self.ego.y), rng, EGO_ID + 1)
        self.frame = 0
        return self._tick(VehicleControl())

    def step(self, control: VehicleControl, camera: bool = True) -> Snapshot:
        """Apply ``control`` (a ``VehicleControl``: NaN rejected and ranges clamped by it) for one tick;
        ``camera=False`` skips rendering the frame (``Snapshot.camera`` is None)."""
        if not isinstance(control, VehicleControl):
            raise TypeError(f"control must be a jtd3.backends.base.VehicleControl, got {type(control).__name__}")
        if self.ego is None or self._closed:
            raise RuntimeError("call reset() before step()")
        return self._tick(control, camera)

    def camera(self) -> np.ndarray:
        """The camera frame of the current state (rendered now)."""
        if self.ego is None:
            raise RuntimeError("no ego: call reset() first")
        return self._camera(self.traffic.vehicles())

    def close(self) -> None:
        self._closed = True
        self.traffic._empty()
        self.ego = None

    # ------------------------------------------------------------------------------------------------------

    def _tick(self, control: VehicleControl, camera: bool = True) -> Snapshot:
        snap = self._compute_tick(control, camera)
        if self.config.min_step_s > 0:
            self._pace()
        return snap

    def _pace(self) -> None:
        """Sleep until ``min_step_s`` after the previous tick returned (a server that is slower than its
        clients): ticks never return faster than that, and a slow tick is not made up for later."""
        now = time.monotonic()
        if now < self._tick_deadline:
            time.sleep(self._tick_deadline - now)
            now = self._tick_deadline
        self._tick_deadline = now + self.config.min_step_s

    def _compute_tick(self, control: VehicleControl, camera: bool = True) -> Snapshot:
        cfg = self.config
        prev = self.ego
        assert prev is not None
        new = dynamics.step(prev, control, cfg.vehicle, cfg.dt)
        self.traffic.step(cfg.dt, (prev.x, prev.y, prev.yaw, prev.speed, self._hl, self._hw))
        self.frame += 1
        collisions = self._collisions(new)
        if collisions:
            new = dynamics.EgoState(prev.x, prev.y, prev.yaw, vx=0.0, vy=0.0,
                                    ax=-prev.vx / cfg.dt, ay=-prev.vy / cfg.dt, steer=new.steer)
        # lane invasion (corners) and off-road (centre) in one projection batch
        before = box_corners(prev.x, prev.y, prev.yaw, self._hl, self._hw)
        after = box_corners(new.x, new.y, new.yaw, self._hl, self._hw)
        batch = self.network.project_many(np.concatenate([before, after, [[new.x, new.y]]]))
        moved = (prev.x, prev.y, prev.yaw) != (new.x, new.y, new.yaw)
        crossed = crossed_markings(self.network, before, after, batch) if moved else ()
        self.ego = new
        self.offroad = not bool(batch.inside[-1])
        invasions = (LaneInvasionEvent(self.frame, crossed),) if crossed else ()
        vehicles = self.traffic.vehicles()
        return Snapshot(
            frame=self.frame,
            timestamp=self.frame * cfg.dt,
            ego=self.ego_state(),
            vehicles=vehicles,
            camera=self._camera(vehicles) if camera else None,
            collisions=tuple(collisions),
            lane_invasions=invasions,
            obstacle=obstacle.front_reading(self.frame, new.x, new.y, new.yaw, self._hl, cfg.obstacle, vehicles)
            if cfg.obstacle.enabled else None,
        )

    def _collisions(self, new: dynamics.EgoState) -> list[CollisionEvent]:
        t = self.traffic
        out = []
        if t.n:
            near = np.flatnonzero(np.hypot(t.x - new.x, t.y - new.y) < self._hl + 6.0)
            if near.size:
                hit = obb_overlap(new.x, new.y, new.yaw, self._hl, self._hw, t.x[near], t.y[near], t.yaw[near],
                                  t.extent[near, 0], t.extent[near, 1])
                for i in near[hit]:
                    out.append(CollisionEvent(
                        frame=self.frame, other_id=int(t.ids[i]), other_type=t.type_ids[i],
                        intensity=relative_impulse(new.velocity, t.vel[i], self.config.vehicle.mass, self.config.npc.mass),
                    ))
        if self.config.static_collisions:
            pts = footprint_points(new.x, new.y, new.yaw, self._hl, self._hw)
            if np.any(self.raster.class_at(pts[:, 0], pts[:, 1]) == BUILDING):
                out.append(CollisionEvent(self.frame, -1, "static.building",
                                          relative_impulse(new.velocity, np.zeros(3), self.config.vehicle.mass, math.inf)))
        return out

    def ego_state(self) -> ActorState:
        e = self.ego
        if e is None:
            raise RuntimeError("no ego: call reset() first")
        return ActorState(
            id=EGO_ID,
            type_id=self.config.vehicle.type_id,
            location=np.array([e.x, e.y, 0.0]),
            rotation=np.array([0.0, e.yaw, 0.0]),
            velocity=np.array([e.vx, e.vy, 0.0]),
            acceleration=np.array([e.ax, e.ay, 0.0]),
            angular_velocity=np.array([0.0, 0.0, e.yaw_rate]),
            extent=np.array([self._hl, self._hw, self._hh]),
        )

    def set_route(self, points: np.ndarray | None) -> None:
        """Route polyline (N, 2) drawn in bird's-eye views (``None`` to clear)."""
        self.route = None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2)

    def _camera(self, vehicles: Vehicles) -> np.ndarray:
        cam = self.config.camera
        if self._kind == "front":
            return self.render_front(cam.width, cam.height, vehicles)
        return self.render_birdeye(cam.width, cam.height, cam.birdeye_mpp, vehicles=vehicles)

    # ------------------------------------------------------------------------------------------------------
    # Rendering (also for humans: larger sizes, RGB)

    def render_front(self, width: int, height: int, vehicles: Vehicles | None = None) -> np.ndarray:
        """Front-camera grey frame (height, width) uint8 of the current state."""
        if self.ego is None:
            raise RuntimeError("no ego: call reset() first")
        key = (int(width), int(height))
        if key not in self._cameras:
            self._cameras[key] = FrontCamera(self.config.camera, self.config.render, self.raster, *key)
        v = self.traffic.vehicles() if vehicles is None else vehicles
        return self._cameras[key].render(self.ego.x, self.ego.y, self.ego.yaw, v)

    def render_birdeye(self, width: int, height: int, mpp: float | None = None, route: np.ndarray | None = None,
                       vehicles: Vehicles | None = None, rgb: bool = False) -> np.ndarray:
        """Bird's-eye frame of the current state: grey (height, width), or RGB (height, width, 3) with colours."""
        if self.ego is None:
            raise RuntimeError("no ego: call reset() first")
        cam, rc = self.config.camera, self.config.render
        mpp = cam.birdeye_mpp if mpp is None else mpp
        route = self.route if route is None else route
        v = self.traffic.vehicles() if vehicles is None else vehicles
        ego = (self.ego.x, self.ego.y, self.ego.yaw)
        if not rgb:
            return render_birdeye(self.raster, ego, v, route, width, height, mpp, rc, (self._hl, self._hw),
                                  cam.birdeye_ahead)
        return colourise_birdeye(self.raster, ego, v, route, width, height, mpp, rc, (self._hl, self._hw),
                                 cam.birdeye_ahead)


def colourise_birdeye(raster, ego, vehicles, route, width, height, mpp, rc, ego_extent, ahead) -> np.ndarray:
    """RGB bird's-eye frame (pure function): grey ground, vehicles red, ego green, route blue."""
    img = cv2.cvtColor(render_birdeye(raster, ego, None, None, width, height, mpp, rc, (0.0, 0.0), ahead),
                       cv2.COLOR_GRAY2RGB)
    x, y, yaw = ego
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    shift = 3

    def to_px(px, py):
        dx, dy = np.asarray(px) - x, np.asarray(py) - y
        f = dx * c + dy * s
        r = -dx * s + dy * c
        return np.round(np.stack([width / 2.0 + r / mpp - 0.5, height / 2.0 + ahead * height - f / mpp - 0.5],
                                 axis=-1) * (1 << shift)).astype(np.int32)

    if route is not None and len(route) >= 2:
        cv2.polylines(img, [to_px(route[:, 0], route[:, 1])], False, (40, 110, 255), max(int(round(0.6 / mpp)), 1),
                      cv2.LINE_AA, shift)
    if vehicles is not None:
        for i in range(len(vehicles)):
            cnr = box_corners(vehicles.location[i, 0], vehicles.location[i, 1], vehicles.yaw[i],
                              vehicles.extent[i, 0], vehicles.extent[i, 1])
            g = int(vehicle_grey(vehicles.ids[i : i + 1], rc)[0])
            cv2.fillConvexPoly(img, to_px(cnr[:, 0], cnr[:, 1]), (220, 60 + g // 4, 50), cv2.LINE_AA, shift)
    cnr = box_corners(x, y, yaw, *ego_extent)
    cv2.fillConvexPoly(img, to_px(cnr[:, 0], cnr[:, 1]), (40, 210, 60), cv2.LINE_AA, shift)
    return img
