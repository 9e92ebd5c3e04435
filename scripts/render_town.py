"""Pictures of the embedded simulator, for a person to look at what the agent sees.

Writes (default under out/, git-ignored):
- <out>/town_<town>.png: the town (roads, markings, sidewalks, buildings) with the route (blue), the NPCs of
  the chosen scenario (red) and the ego (green);
- <out>/strip_<town>.png: frames along the route driven by the pure-pursuit + PID controller: per column the
  84x84 front camera (as the agent sees it, enlarged), a 256x144 front camera, the 84x84 bird's-eye view and a
  colour 256x256 bird's-eye view.

Usage: python scripts/render_town.py [--town town01] [--scenario 0] [--seed 0] [--frames 8] [--out out]
"""

from __future__ import annotations

import argparse
import math
import pathlib

import cv2
import numpy as np

from jtd3.backends.base import VehicleControl
from jtd3.envs.config import EnvConfig
from jtd3.baselines.pure_pursuit import PurePursuit
from jtd3.backends.sim import SimConfig, SimWorld
from jtd3.backends.sim.config import TOWNS
from jtd3.backends.sim.events import box_corners
from jtd3.backends.sim.render import BUILDING, VERGE
from jtd3.roads.routes import load_reference_route, reference_spawn, route_from_plan


def town_picture(world: SimWorld, route_xy: np.ndarray, level: int = 1) -> np.ndarray:
    r = world.raster
    grey = r.level(level)
    cls = cv2.resize(r.classes, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_NEAREST)
    img = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR).astype(np.float32)
    img[cls == BUILDING] *= np.array([0.75, 0.85, 1.1], np.float32)  # warm tint for buildings
    img[cls == VERGE] *= np.array([0.8, 1.05, 0.8], np.float32)  # green tint for verges
    img = np.clip(img, 0, 255).astype(np.uint8)
    scale = 1.0 / (r.resolution * 2**level)
    shift = 3

    def px(xy):
        return np.round(np.stack([(xy[:, 0] - r.x0) * scale, (xy[:, 1] - r.y0) * scale], axis=1) * (1 << shift)).astype(np.int32)

    cv2.polylines(img, [px(route_xy)], False, (255, 120, 30), 4, cv2.LINE_AA, shift)
    v = world.traffic.vehicles()
    for i in range(len(v)):
        c = box_corners(v.location[i, 0], v.location[i, 1], v.yaw[i], v.extent[i, 0], v.extent[i, 1])
        cv2.fillConvexPoly(img, px(c), (40, 40, 230), cv2.LINE_AA, shift)
    e = world.ego
    c = box_corners(e.x, e.y, e.yaw, world._hl, world._hw)
    cv2.fillConvexPoly(img, px(c), (40, 220, 40), cv2.LINE_AA, shift)
    return img


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1, cv2.LINE_AA)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--town", default="town01", choices=TOWNS)
    ap.add_argument("--scenario", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--pitch", type=float, default=0.0, help="front camera pitch (degrees)")
    ap.add_argument("--out", default="out")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    cfg = SimConfig(town=args.town)
    cfg = SimConfig(town=args.town, camera=type(cfg.camera)(pitch=args.pitch))
    world = SimWorld(cfg)
    n = EnvConfig(scenario=args.scenario).num_vehicles  # the scenario table lives in the env config
    if args.town == "town01":
        route = load_reference_route()
        spawn = reference_spawn(route)
    else:
        plan = world.network.random_route(np.random.default_rng(args.seed), 150.0, 300.0)
        route = route_from_plan(plan)
        spawn = reference_spawn(route)
    snap = world.reset(spawn, n, args.seed)
    world.set_route(route.points)
    cv2.imwrite(str(out / f"town_{args.town}.png"), town_picture(world, route.points))

    pp = PurePursuit(route.points)
    frames = []
    steps = []
    k = 0
    while not (pp.done and snap.ego.speed < 0.1) and k < 3000:
        e = snap.ego
        steer, throttle, brake = pp.control(e.location[0], e.location[1], e.yaw, e.speed, cfg.dt, snap.vehicles.location[:, :2])
        snap = world.step(VehicleControl(throttle=throttle, steer=steer, brake=brake))
        steps.append(snap)
        k += 1
        if snap.collisions:
            print(f"collision at step {k}: {snap.collisions}")
            break
    picks = np.linspace(0, len(steps) - 1, args.frames).astype(int)
    # replay to the picked steps to grab the larger views (deterministic: same seed, same controls)
    snap = world.reset(spawn, n, args.seed)
    pp.reset()
    cols = []
    for k in range(len(steps)):
        e = snap.ego
        steer, throttle, brake = pp.control(e.location[0], e.location[1], e.yaw, e.speed, cfg.dt, snap.vehicles.location[:, :2])
        snap = world.step(VehicleControl(throttle=throttle, steer=steer, brake=brake))
        if k in set(picks.tolist()):
            small = cv2.resize(snap.camera, (252, 252), interpolation=cv2.INTER_NEAREST)
            big = cv2.resize(world.render_front(256, 144), (252, 142))
            bev = cv2.resize(world.render_birdeye(84, 84), (252, 252), interpolation=cv2.INTER_NEAREST)
            bev_rgb = cv2.cvtColor(cv2.resize(world.render_birdeye(256, 256, 0.25, rgb=True), (252, 252)), cv2.COLOR_RGB2BGR)
            col = np.concatenate([
                _label(cv2.cvtColor(small, cv2.COLOR_GRAY2BGR), f"t={snap.timestamp:.1f}s front 84"),
                _label(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR), "front 256x144"),
                _label(cv2.cvtColor(bev, cv2.COLOR_GRAY2BGR), "bird's-eye 84"),
                _label(bev_rgb, "bird's-eye RGB"),
            ])
            cols.append(np.pad(col, ((0, 0), (2, 2), (0, 0)), constant_values=255))
    strip = np.concatenate(cols, axis=1)
    cv2.imwrite(str(out / f"strip_{args.town}.png"), strip)
    print(f"wrote {out / f'town_{args.town}.png'} and {out / f'strip_{args.town}.png'} ({len(steps)} steps)")


if __name__ == "__main__":
    main()
