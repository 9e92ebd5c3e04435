"""Settings of the embedded simulator (``SimConfig``): town, time step, camera, vehicle dynamics, traffic.

Units: metres, seconds, degrees, kilograms. Frames: CARLA's (x forward / east, y right / south, z up).
Every field is read by the simulator (tests/test_sim_config.py proves it with ``jtd3.config.track_reads``).
"""

from __future__ import annotations

import dataclasses

from jtd3.backends.obstacle import ObstacleSensorConfig
from jtd3.config import ConfigNode, check, choice, nested, param

__all__ = ["CameraConfig", "NpcConfig", "RenderConfig", "SimConfig", "VehicleConfig"]

TOWNS = ("town01", "grid3", "grid4")


@dataclasses.dataclass(frozen=True)
class CameraConfig(ConfigNode):
    """The observation camera (``Snapshot.camera``): grayscale uint8 (height, width)."""

    kind: str = choice("front", ("front", "birdeye"), "front: perspective camera on the hood; birdeye: top-down, heading up")
    width: int = param(84, "image width in pixels")
    height: int = param(84, "image height in pixels")
    fov: float = param(90.0, "horizontal field of view of the front camera (degrees)")
    x: float = param(1.6, "front camera mount, metres ahead of the vehicle centre")
    z: float = param(1.5, "front camera mount, metres above the ground")
    pitch: float = param(0.0, "front camera pitch in degrees (CARLA: positive looks up)")
    render_distance: float = param(150.0, "ground farther than this (m) fades into the horizon colour")
    birdeye_mpp: float = param(0.5, "bird's-eye view: metres per pixel")
    birdeye_ahead: float = param(0.25, "bird's-eye view: ego placed this fraction of the height below the centre")

    def __post_init__(self) -> None:
        check(8 <= self.width <= 2048, "camera.width", self.width, "in [8, 2048]")
        check(8 <= self.height <= 2048, "camera.height", self.height, "in [8, 2048]")
        check(10.0 <= self.fov <= 170.0, "camera.fov", self.fov, "in [10, 170] degrees")
        check(self.z > 0.0, "camera.z", self.z, "> 0 (above the ground)")
        check(-89.0 <= self.pitch <= 30.0, "camera.pitch", self.pitch, "in [-89, 30] degrees")
        check(self.render_distance > 5.0, "camera.render_distance", self.render_distance, "> 5 m")
        check(self.birdeye_mpp > 0.0, "camera.birdeye_mpp", self.birdeye_mpp, "> 0")
        check(0.0 <= self.birdeye_ahead < 0.5, "camera.birdeye_ahead", self.birdeye_ahead, "in [0, 0.5)")


@dataclasses.dataclass(frozen=True)
class RenderConfig(ConfigNode):
    """The rasterised town the cameras sample (grey levels 0-255) and its resolution."""

    resolution: float = param(0.1, "metres per pixel of the town raster")
    asphalt: int = param(70, "grey level of driving lanes and junctions")
    shoulder: int = param(95, "grey level of shoulders")
    sidewalk: int = param(150, "grey level of sidewalks and verges next to the road")
    building: int = param(45, "grey level of the ground beyond the verge (buildings / static obstacles)")
    marking_white: int = param(235, "grey level of white markings")
    marking_yellow: int = param(185, "grey level of yellow markings")
    curb: int = param(185, "grey level of curbs")
    sky: int = param(200, "grey level of the sky at the horizon")
    horizon: int = param(120, "grey level the ground fades to at render_distance")
    dash_length: float = param(3.0, "length of a broken-line dash (m)")
    dash_gap: float = param(5.0, "gap between broken-line dashes (m)")
    verge_width: float = param(3.0, "ground within this distance (m) of any lane is a verge, farther is building")
    route: int = param(250, "grey level of the route line in the bird's-eye view")
    ego: int = param(255, "grey level of the ego box in the bird's-eye view")
    npc_grey_min: int = param(60, "darkest NPC body grey level")
    npc_grey_max: int = param(220, "brightest NPC body grey level")

    def __post_init__(self) -> None:
        check(0.02 <= self.resolution <= 1.0, "render.resolution", self.resolution, "in [0.02, 1] m/px")
        for name in ("asphalt", "shoulder", "sidewalk", "building", "marking_white", "marking_yellow", "curb",
                     "sky", "horizon", "route", "ego", "npc_grey_min", "npc_grey_max"):
            v = getattr(self, name)
            check(0 <= v <= 255, f"render.{name}", v, "a grey level in [0, 255]")
        check(self.npc_grey_min <= self.npc_grey_max, "render.npc_grey_min", self.npc_grey_min, "<= npc_grey_max")
        check(self.dash_length > 0 and self.dash_gap > 0, "render.dash_length", self.dash_length, "> 0 (and dash_gap > 0)")
        check(self.verge_width >= 0.0, "render.verge_width", self.verge_width, ">= 0")


@dataclasses.dataclass(frozen=True)
class VehicleConfig(ConfigNode):
    """Ego kinematic bicycle model and its actuators."""

    type_id: str = param("vehicle.tesla.model3", "blueprint name reported in ActorState.type_id")
    length: float = param(4.8, "bounding box length (m)")
    width: float = param(2.1, "bounding box width (m)")
    height: float = param(1.5, "bounding box height (m)")
    wheelbase: float = param(2.9, "axle distance (m)")
    cg_to_rear: float = param(1.45, "centre (reported location) to rear axle (m)")
    max_steer: float = param(35.0, "front wheel angle at steer = 1 (degrees)")
    steer_rate: float = param(4.0, "steering actuator rate limit (normalised steer units per second)")
    throttle_tau: float = param(0.2, "first-order time constant of the throttle response (s)")
    brake_tau: float = param(0.1, "first-order time constant of the brake response (s)")
    max_accel: float = param(3.5, "acceleration at full throttle from standstill (m/s^2)")
    max_brake: float = param(8.0, "deceleration at full brake (m/s^2)")
    top_speed: float = param(45.0, "speed where full-throttle drive force vanishes (m/s)")
    reverse_top_speed: float = param(6.0, "top speed in reverse (m/s)")
    drag: float = param(4.0e-4, "aerodynamic deceleration coefficient (1/m): a = drag * v^2")
    rolling: float = param(0.15, "rolling-resistance deceleration (m/s^2)")
    mass: float = param(1800.0, "mass (kg), for collision intensities")
    grip: float = param(0.85, "tyre-road friction coefficient: longitudinal and lateral acceleration share a "
                        "friction circle of radius grip * 9.81 m/s^2; beyond it the car understeers")

    def __post_init__(self) -> None:
        check(0.1 <= self.grip <= 1.5, "vehicle.grip", self.grip, "in [0.1, 1.5] (dry asphalt: about 0.8-0.9)")
        for name in ("length", "width", "height", "wheelbase", "max_accel", "max_brake", "top_speed",
                     "reverse_top_speed", "mass", "steer_rate", "throttle_tau", "brake_tau"):
            v = getattr(self, name)
            check(v > 0, f"vehicle.{name}", v, "> 0")
        check(0 < self.cg_to_rear < self.wheelbase, "vehicle.cg_to_rear", self.cg_to_rear, "in (0, wheelbase)")
        check(0 < self.max_steer < 80, "vehicle.max_steer", self.max_steer, "in (0, 80) degrees")
        check(self.drag >= 0 and self.rolling >= 0, "vehicle.drag", self.drag, ">= 0 (and rolling >= 0)")


@dataclasses.dataclass(frozen=True)
class NpcConfig(ConfigNode):
    """NPC traffic: lane following at the speed limit with IDM car following and junction reservations."""

    blueprints: tuple[str, ...] = param(
        ("vehicle.audi.a2", "vehicle.citroen.c3", "vehicle.ford.mustang", "vehicle.nissan.patrol", "vehicle.mini.cooper_s"),
        "type_id of NPCs (cycled by spawn order)",
    )
    extents: tuple[tuple[float, float, float], ...] = param(
        ((1.85, 0.90, 0.78), (2.00, 0.95, 0.80), (2.40, 0.95, 0.65), (2.40, 1.00, 0.95), (1.95, 0.95, 0.72)),
        "bounding-box half sizes (x, y, z) per blueprint (m); approximate, not measured from CARLA",
    )
    speed_factor: float = param(1.0, "NPC cruise speed as a fraction of the road's speed limit")
    default_speed_limit: float = param(30.0, "speed limit (km/h) of roads without a <speed> record")
    max_lateral_accel: float = param(2.5, "curves are taken at most at sqrt(a_lat / curvature) (m/s^2)")
    idm_accel: float = param(2.0, "IDM maximum acceleration (m/s^2)")
    idm_decel: float = param(3.0, "IDM comfortable deceleration (m/s^2)")
    idm_headway: float = param(1.2, "IDM time headway (s)")
    idm_min_gap: float = param(2.5, "IDM standstill gap, bumper to bumper (m)")
    max_decel: float = param(8.0, "hardest NPC braking (m/s^2); in curves the friction circle leaves less")
    grip: float = param(0.85, "NPC tyre-road friction coefficient: braking in a curve is limited to "
                        "sqrt((grip g)^2 - a_lat^2); max_lateral_accel and max_decel must stay within grip * g")
    lookahead: float = param(50.0, "distance ahead along its path an NPC watches for vehicles and the ego (m)")
    spawn_min_distance: float = param(20.0, "NPCs spawn at least this far from the ego (m)")
    spawn_min_gap: float = param(12.0, "NPCs spawn at least this far apart along a lane (m)")
    conflict_distance: float = param(3.0, "junction lanes closer than this (m) conflict and are reserved exclusively")
    junction_approach: float = param(15.0, "an NPC requests its junction lane this far before the junction (m)")
    ego_margin: float = param(0.6, "lateral clearance (m) beyond half widths at which the ego blocks an NPC's path")
    ego_yield_time: float = param(5.0, "NPCs do not enter a junction lane the ego will reach within this time (s)")
    mass: float = param(1500.0, "NPC mass (kg), for collision intensities")

    def __post_init__(self) -> None:
        check(len(self.blueprints) > 0, "npc.blueprints", self.blueprints, "non-empty")
        check(len(self.extents) == len(self.blueprints), "npc.extents", self.extents, "one (x, y, z) per blueprint")
        check(all(len(e) == 3 and min(e) > 0 for e in self.extents), "npc.extents", self.extents, "positive (x, y, z) triples")
        for name in ("speed_factor", "default_speed_limit", "max_lateral_accel", "idm_accel", "idm_decel",
                     "idm_headway", "idm_min_gap", "max_decel", "lookahead", "conflict_distance", "mass"):
            v = getattr(self, name)
            check(v > 0, f"npc.{name}", v, "> 0")
        check(self.spawn_min_distance >= 0 and self.spawn_min_gap > 0, "npc.spawn_min_gap", self.spawn_min_gap, "> 0")
        check(self.junction_approach > 0 and self.ego_margin >= 0, "npc.junction_approach", self.junction_approach, "> 0")
        check(self.ego_yield_time >= 0, "npc.ego_yield_time", self.ego_yield_time, ">= 0")
        check(0.1 <= self.grip <= 1.5, "npc.grip", self.grip, "in [0.1, 1.5]")
        a_grip = self.grip * 9.81
        check(self.max_lateral_accel < a_grip, "npc.max_lateral_accel", self.max_lateral_accel,
              f"< grip * g = {a_grip:.2f} m/s^2 (the tyres could not hold the curve speed it plans)")
        check(self.max_decel <= a_grip, "npc.max_decel", self.max_decel, f"<= grip * g = {a_grip:.2f} m/s^2")


@dataclasses.dataclass(frozen=True)
class SimConfig(ConfigNode):
    """The embedded simulator (``jtd3.backends.sim.SimWorld``)."""

    town: str = choice("town01", TOWNS, "town01: CARLA's Town01; grid3/grid4: procedural towns (layout from town_seed)")
    town_seed: int = param(0, "layout seed of procedural towns")
    dt: float = param(0.05, "fixed time step (s), CARLA's fixed_delta_seconds")
    static_collisions: bool = param(True, "the ground beyond the verge (buildings) is a static obstacle")
    min_step_s: float = param(
        0.0, "wall-clock seconds one tick takes at least (the world sleeps out the rest): paces the simulator like a "
        "synchronous CARLA server, e.g. 0.025 with action_repeat 2 = 20 env steps/s; 0: as fast as it computes"
    )
    camera: CameraConfig = nested(CameraConfig)
    render: RenderConfig = nested(RenderConfig)
    vehicle: VehicleConfig = nested(VehicleConfig)
    npc: NpcConfig = nested(NpcConfig)
    obstacle: ObstacleSensorConfig = nested(ObstacleSensorConfig)

    def __post_init__(self) -> None:
        check(0.001 <= self.dt <= 0.5, "dt", self.dt, "in [0.001, 0.5] s")
        check(0.0 <= self.min_step_s <= 10.0, "min_step_s", self.min_step_s, "in [0, 10] s")
