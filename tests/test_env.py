"""DrivingEnv over a scripted backend double (tests/env_double.py) and over the embedded simulator."""

import dataclasses
import inspect
import math
import pickle

import gymnasium as gym
import numpy as np
import pytest

from env_double import ScriptedBackend, npc
from jtd3.backends.base import Backend
from jtd3.config import from_dict
from jtd3.envs import ENV_ID, DrivingEnv, EnvConfig, make_env, make_vector_env, vector_env_configs
from jtd3.envs.observation import kinematics_layout
from jtd3.envs.speed_control import following_speed
from jtd3.envs.reward import COMPONENTS
from jtd3.roads.routes import load_reference_route

LAYOUT = kinematics_layout(EnvConfig().observation)
WP = LAYOUT["waypoints"]
KMH = 1 / 3.6


def double_env(backend=None, **overrides):
    """The env over the scripted backend. The tests script from the route's start, one tick per step, with pedal
    actions (they check per-tick mechanics; action repeat and the target-speed action have their own tests)."""
    base = {"route_start": "beginning", "action_repeat": 1, "longitudinal_action": "pedals"}
    cfg = from_dict(EnvConfig, {**base, **overrides})
    backend = ScriptedBackend() if backend is None else backend
    return DrivingEnv(cfg, backend=backend), backend


def local_waypoints(obs, cfg=EnvConfig()):
    return obs["kinematics"][WP].reshape(-1, 2) * cfg.observation.waypoint_scale_m


def route_poses(route, s_values):
    xs, ys, yaws = route.point_at(np.asarray(s_values))
    return [(float(x), float(y), float(w), 8.0) for x, y, w in zip(xs, ys, yaws)]


# ----------------------------------------------------------------------------------------------------------
# The double is honest: same protocol as the real backends.


def test_env_double_is_an_honest_backend():
    from jtd3.backends.carla.session import CarlaSession
    from jtd3.backends.sim.world import SimWorld

    double = ScriptedBackend()
    assert isinstance(double, Backend)
    for name in ("reset", "step", "camera", "close"):
        proto = list(inspect.signature(getattr(Backend, name)).parameters)
        for impl in (ScriptedBackend, SimWorld, CarlaSession):
            assert list(inspect.signature(getattr(impl, name)).parameters) == proto, (impl, name)
    assert isinstance(inspect.getattr_static(ScriptedBackend, "opendrive"), property)


# ----------------------------------------------------------------------------------------------------------
# Spaces and observation


def test_spaces_follow_the_config():
    env, _ = double_env(observation={"n_waypoints": 10, "frame_stack": 3})
    assert env.observation_space["camera"].shape == (3, 84, 84)
    assert env.observation_space["camera"].dtype == np.uint8
    assert env.observation_space["kinematics"].shape == (5 + 2 * 10,)
    assert env.observation_space["kinematics"].dtype == np.float32
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert set(info["reward_components"]) == set(COMPONENTS)


def test_frame_stack_repeats_the_first_frame_then_shifts_oldest_first():
    env, be = double_env()
    obs, _ = env.reset(seed=0)
    first = obs["camera"][0, 0, 0]
    assert (obs["camera"][:, 0, 0] == first).all()  # first frame repeated, not zeros
    assert obs["camera"][:, 1:].any()
    stamps = [first]
    for _ in range(5):
        obs, *_ = env.step(np.array([0.0, 0.5], np.float32))
        stamps.append(obs["camera"][-1, 0, 0])
    assert stamps == [first + k for k in range(6)]
    assert list(obs["camera"][:, 0, 0]) == stamps[-4:]  # oldest first


def test_driving_the_route_keeps_waypoint_features_alive_and_pays_each_waypoint_once():
    ref = load_reference_route()
    env, be = double_env()
    obs, info = env.reset(seed=0)
    s_values = np.arange(0.4, ref.length, 0.4)
    be.teleports = route_poses(ref, s_values)
    n_wp = EnvConfig().observation.n_waypoints
    paid, goal_paid, prev_next, prev_x0 = 0.0, 0, info["next_waypoint"], None
    saw_right_turn_ahead = False
    for k, s in enumerate(s_values):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        comps = info["reward_components"]
        assert reward == sum(comps[c] for c in COMPONENTS)  # exactly the sum, in order
        loc = local_waypoints(obs)
        gt = env.ground_truth()
        # (1) never zero: the first waypoint lies ahead within one spacing, the later ones farther
        assert -1e-6 <= loc[0, 0] <= 3.3
        assert np.all(np.hypot(loc[1:, 0], loc[1:, 1]) > 2.5)
        # (2) the vehicle-frame points are the route's next waypoints seen from the car (independent inverse)
        r = math.radians(gt.ego.yaw)
        world = np.stack([gt.ego.location[0] + loc[:, 0] * math.cos(r) - loc[:, 1] * math.sin(r),
                          gt.ego.location[1] + loc[:, 0] * math.sin(r) + loc[:, 1] * math.cos(r)], axis=1)
        j = info["next_waypoint"]
        idx = np.minimum(np.arange(j, j + n_wp), len(ref.waypoints) - 1)
        np.testing.assert_allclose(world, ref.waypoints[idx], atol=2e-3)
        # (3) on the straight the next waypoint approaches by the step length until it is passed
        if prev_x0 is not None and j == prev_next and s < 200.0:
            assert loc[0, 0] == pytest.approx(prev_x0 - 0.4, abs=1e-3)
        if 195.0 < s < 214.0 and loc[-1, 1] > 5.0:
            saw_right_turn_ahead = True  # the right turn shows up as positive y (right) far ahead
        # (4) the waypoint bonus exactly when the next-waypoint index moves
        w = EnvConfig().reward.weights.waypoint
        assert comps["waypoint"] == pytest.approx(w * (j - prev_next))
        paid += comps["waypoint"]
        goal_paid += comps["goal"] != 0.0
        prev_next, prev_x0 = j, loc[0, 0]
        if terminated or truncated:
            break
    assert saw_right_turn_ahead
    assert terminated and not truncated and info["termination_reason"] == "route_completed" and info["success"]
    assert info["route_completion"] == 1.0
    assert goal_paid == 1 and comps["goal"] == EnvConfig().reward.weights.goal
    assert paid == pytest.approx(0.5 * (info["next_waypoint"] - 1))
    assert info["waypoints_passed"] == info["next_waypoint"] - 1 >= 84
    assert ref.length - info["route_s"] <= EnvConfig().goal_tolerance_m
    assert info["distance_m"] == pytest.approx(info["route_s"], rel=0.01)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, np.float32))


def test_lane_features_speed_and_heading_are_scaled_with_signs():
    ref = load_reference_route()
    env, be = double_env()
    env.reset(seed=0)
    x, y, _ = ref.point_at(20.0)
    # 1 m right of the lane (heading west: right is -y), yaw turned 10 degrees right, 30 km/h.
    be.teleports = [(float(x), float(y) - 1.0, 190.0, 30 * KMH)]
    obs, _, terminated, _, info = env.step(np.zeros(2, np.float32))
    k = obs["kinematics"]
    o = EnvConfig().observation
    assert not terminated
    route_to_lane = env.network.project(float(x), float(y)).lateral_offset  # the route sits ~1 cm off the centre
    assert abs(route_to_lane) < 0.1
    assert k[LAYOUT["lane_offset"]][0] == pytest.approx((1.0 + route_to_lane) / o.lateral_scale_m, abs=1e-3)
    assert k[LAYOUT["lane_heading"]][0] == pytest.approx(10.0 / o.heading_scale_deg, abs=1e-3)
    assert k[LAYOUT["speed"]][0] == pytest.approx(30.0 / o.speed_scale_kmh, abs=1e-4)
    assert k[LAYOUT["wp_angle"]][0] < 0.0  # the car looks 10 deg right of the route: the waypoint is to its left
    assert info["route_lateral_m"] == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Termination and truncation


def test_collision_terminates_with_a_speed_scaled_penalty():
    env, be = double_env()
    env.reset(seed=0)
    be.collide_on_steps = {3}
    for _ in range(2):
        _, _, terminated, _, _ = env.step(np.array([0.0, 1.0], np.float32))
        assert not terminated
    _, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0], np.float32))
    assert terminated and not truncated and info["termination_reason"] == "collision" and not info["success"]
    assert info["collisions"] == 1
    v = env.ground_truth().ego.speed
    w = EnvConfig().reward
    assert info["reward_components"]["collision"] == pytest.approx(
        -w.weights.collision * (1 + v / (w.collision_speed_scale_kmh * KMH)))


def test_only_the_last_tick_of_a_step_asks_for_a_frame_and_an_early_end_still_observes_its_own():
    env, be = double_env(action_repeat=3)
    env.reset(seed=0)
    obs, *_ = env.step(np.array([0.0, 1.0], np.float32))
    assert be.camera_requests == [False, False, True]
    assert obs["camera"][-1, 0, 0] == be._frame % 256  # the newest frame is the step's last tick's
    be.collide_on_steps = {5}  # the second tick of the next step
    obs, _, terminated, _, info = env.step(np.array([0.0, 1.0], np.float32))
    assert terminated and info["termination_reason"] == "collision" and be.camera_requests[3:] == [False, False]
    assert obs["camera"][-1, 0, 0] == be._frame % 256 and (obs["camera"][-1, 1:] == be.camera()[1:]).all()


def test_off_route_terminates_beyond_the_threshold_only():
    ref = load_reference_route()
    env, be = double_env()
    env.reset(seed=0)
    x, y, yaw = ref.point_at(5.0)
    be.teleports = [(float(x), float(y) + 2.4, float(yaw), 1.0), (float(x), float(y) + 2.6, float(yaw), 1.0)]
    _, _, terminated, _, info = env.step(np.zeros(2, np.float32))
    assert not terminated and info["termination_reason"] is None
    _, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert terminated and not truncated and info["termination_reason"] == "off_route"
    assert info["reward_components"]["off_route"] == -EnvConfig().reward.weights.off_route


def test_time_limit_truncates_and_does_not_terminate():
    env, be = double_env(max_episode_steps=5)
    env.reset(seed=0)
    for k in range(1, 6):
        _, _, terminated, truncated, info = env.step(np.array([0.0, -1.0], np.float32))
        assert not terminated
        assert truncated == (k == 5)
    assert info["termination_reason"] == "time_limit" and not info["success"]


def test_lane_invasions_are_counted_and_penalised():
    env, be = double_env()
    env.reset(seed=0)
    be.invade_on_steps = {2, 4}
    for _ in range(4):
        _, _, _, _, info = env.step(np.array([0.0, 0.5], np.float32))
    assert info["lane_invasions"] == 2
    assert info["reward_components"]["lane_invasion"] == -EnvConfig().reward.weights.lane_invasion


def test_vehicle_ahead_costs_proximity_and_waives_standstill():
    ref = load_reference_route()
    env, be = double_env()
    env.reset(seed=0)
    x, y, _ = ref.point_at(10.0)
    be.npcs = npc(float(x) - 10.0, float(y))  # 10 m ahead (heading west), standing
    be.teleports = [(float(x), float(y), 180.0, 8.0), (float(x), float(y), 180.0, 0.0)]
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    cfg = EnvConfig().reward
    gap = 10.0 - 2.4 - 2.0
    ttc = gap / 8.0
    assert info["reward_components"]["proximity"] == pytest.approx(
        -cfg.weights.proximity * max(1 - ttc / cfg.ttc_threshold_s, 1 - gap / (cfg.min_gap_m + cfg.headway_s * 8.0)))
    _, _, _, _, info = env.step(np.zeros(2, np.float32))  # stopped behind it: waiting, not idling
    assert info["reward_components"]["standstill"] == 0.0
    be.npcs = npc(float(x) - 10.0, float(y) + 4.0, yaw=0.0)  # in the oncoming lane: not ahead
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["reward_components"]["proximity"] == 0.0
    assert info["reward_components"]["standstill"] == -cfg.weights.standstill


def test_lead_vehicle_entries_read_the_gap_and_closing_speed_of_the_vehicle_ahead():
    ref = load_reference_route()
    env, be = double_env(observation={"lead_vehicle": True, "n_waypoints": 10})
    o = env.config.observation
    layout = kinematics_layout(o)
    assert env.observation_space["kinematics"].shape == (5 + 2 * 10 + 2,)
    obs, _ = env.reset(seed=0)
    k = obs["kinematics"]
    assert k[layout["lead_gap"]][0] == 1.0 and k[layout["lead_closing"]][0] == 0.0  # nobody ahead
    x, y, _ = ref.point_at(10.0)
    be.npcs = npc(float(x) - 10.0, float(y))  # 10 m ahead (heading west), standing
    be.teleports = [(float(x), float(y), 180.0, 8.0), (float(x), float(y), 180.0, 8.0)]
    obs, *_ = env.step(np.zeros(2, np.float32))
    k = obs["kinematics"]
    # the obstacle sensor's sweep distance: the bumper gap less its sphere's radius (1 m)
    assert k[layout["lead_gap"]][0] == pytest.approx((10.0 - 2.4 - 2.0 - 1.0) / o.lead_range_m, abs=1e-5)
    assert k[layout["lead_closing"]][0] == pytest.approx(8.0 * 3.6 / o.speed_scale_kmh, abs=1e-5)
    assert k[layout["waypoints"]].shape == (20,)  # the waypoints keep their place
    be.npcs = npc(float(x) - 10.0, float(y) + 4.0, yaw=0.0)  # in the oncoming lane: not ahead
    obs, *_ = env.step(np.zeros(2, np.float32))
    assert obs["kinematics"][layout["lead_gap"]][0] == 1.0 and obs["kinematics"][layout["lead_closing"]][0] == 0.0


def test_info_is_plain_python():
    env, _ = double_env()
    _, info0 = env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0.1, 0.5], np.float32))
    assert set(info0) == set(info)

    def plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        return v is None or type(v) in (bool, int, float, str)

    assert plain(info) and plain(info0)
    pickle.dumps(info)


def test_bad_actions_and_options_are_refused():
    env, _ = double_env()
    with pytest.raises(ValueError, match="options"):
        env.reset(seed=0, options={"x": 1})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))


def test_reference_route_refused_on_another_town():
    with pytest.raises(ValueError, match="Town01"):
        double_env(backend=ScriptedBackend(town="grid3"))


def test_random_routes_come_from_the_episode_seed():
    env, be = double_env(backend=ScriptedBackend(town="grid3"), route="random")
    env.reset(seed=5)
    r1 = env.ground_truth().route
    env.reset(seed=6)
    r2 = env.ground_truth().route
    env.reset(seed=5)
    r3 = env.ground_truth().route
    np.testing.assert_array_equal(r1.points, r3.points)
    assert r1.points.shape != r2.points.shape or not np.allclose(r1.points, r2.points)
    assert 150.0 <= r1.length <= 300.0 + 1e-6
    assert np.all(np.diff(r1.waypoint_s) <= 3.0 + 1e-6)
    spawn = be.resets[-1][0]
    assert (spawn.x, spawn.y) == pytest.approx(tuple(r3.points[0]))


def test_random_start_is_on_the_route_from_the_episode_seed_and_completion_counts_from_it():
    env, be = double_env(route_start="random", route_start_margin_m=60.0)
    route = load_reference_route()
    starts = []
    for seed in range(8):
        _, info = env.reset(seed=seed)
        spawn = be.resets[-1][0]
        s0 = info["route_s"]
        x, y, yaw = route.point_at(s0)
        assert (spawn.x, spawn.y) == pytest.approx((float(x), float(y)), abs=1e-6)
        assert spawn.yaw == pytest.approx(float(yaw))
        assert 0.0 <= s0 <= route.length - 60.0 + 1e-6
        assert info["route_completion"] == 0.0
        starts.append(s0)
    assert len(set(np.round(starts, 3))) == 8, starts  # a new start every episode
    assert max(starts) > 0.5 * (route.length - 60.0)  # spread over the route, not bunched at its beginning
    _, info = env.reset(seed=3)
    assert info["route_s"] == pytest.approx(starts[3])  # the same seed, the same start

    # completion is the share of the route ahead of the start that was driven
    env.reset(seed=5)
    s0 = starts[5]
    be.teleports = route_poses(route, [s0 + 10.0 * k for k in range(1, 4)])
    for _ in range(3):
        _, _, _, _, info = env.step(np.array([0.0, 0.5], np.float32))
    assert info["route_completion"] == pytest.approx(30.0 / (route.length - s0), abs=0.02)

    beginning, be0 = double_env()
    _, info = beginning.reset(seed=5)
    assert info["route_s"] == 0.0 and (be0.resets[-1][0].x, be0.resets[-1][0].y) == pytest.approx(tuple(route.points[0]))


def test_close_closes_the_backend():
    env, be = double_env()
    env.close()
    assert be.closed == 1


# ----------------------------------------------------------------------------------------------------------
# The embedded simulator


@pytest.fixture(scope="module")
def sim_env():
    env = make_env(EnvConfig(), render_mode="rgb_array")
    yield env
    env.close()


def test_episode_is_reproducible_for_a_seed(sim_env):
    def run(seed):
        rng = np.random.default_rng(0)
        obs, _ = sim_env.reset(seed=seed)
        out = [obs["kinematics"].copy()]
        cams = [obs["camera"].copy()]
        npcs = sim_env.ground_truth().vehicles.location.copy()
        for _ in range(40):
            obs, r, *_ = sim_env.step(np.array([rng.uniform(-0.2, 0.2), 0.8], np.float32))
            out.append(obs["kinematics"].copy())
            out.append(np.array([r]))
            cams.append(obs["camera"].copy())
        return np.concatenate(out), np.stack(cams), npcs

    a, ca, na = run(3)
    b, cb, nb = run(3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ca, cb)
    np.testing.assert_array_equal(na, nb)
    _, _, nc = run(4)
    assert na.shape != nc.shape or not np.allclose(na, nc)  # another seed, other traffic


def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    env = gym.make(ENV_ID, render_mode="rgb_array")  # through the registry: the checker also tries render modes
    try:
        check_env(env.unwrapped, skip_render_check=False)
    finally:
        env.close()


def test_render_returns_an_rgb_picture(sim_env):
    sim_env.reset(seed=0)
    img = sim_env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] >= 256
    assert img.std() > 10  # not blank


def test_registered_id_makes_the_env():
    env = gym.make(ENV_ID, config={"scenario": 0})
    try:
        obs, _ = env.reset(seed=1)
        assert env.observation_space.contains(obs)
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        assert isinstance(r, float) and "termination_reason" in info
    finally:
        env.close()


def test_async_vector_env_with_two_simulators():
    venv = make_vector_env(EnvConfig(), 2, seed=10)
    try:
        obs, infos = venv.reset(seed=[0, 1])
        assert obs["camera"].shape == (2, 4, 84, 84) and obs["kinematics"].shape == (2, 55)
        for _ in range(3):
            obs, rewards, terminated, truncated, infos = venv.step(np.tile([0.0, 0.6], (2, 1)).astype(np.float32))
        assert rewards.shape == (2,) and np.all(np.isfinite(rewards))
        assert infos["speed_kmh"].shape == (2,) and np.all(infos["speed_kmh"] > 0)
        assert infos["reward_components"]["progress"].shape == (2,)
    finally:
        venv.close()


def test_vector_configs_give_each_carla_env_its_server_and_traffic_manager():
    carla = from_dict(EnvConfig, {"backend": "carla"})
    cfgs = vector_env_configs(carla, 3, ["10.0.0.1:2000", "10.0.0.2:2000", "10.0.0.1:3000"])
    assert [(c.carla.host, c.carla.port, c.carla.tm_port) for c in cfgs] == [
        ("10.0.0.1", 2000, 8000), ("10.0.0.2", 2000, 8001), ("10.0.0.1", 3000, 8002)]
    assert all(dataclasses.replace(c, carla=carla.carla) == carla for c in cfgs)  # nothing else changes
    with pytest.raises(ValueError, match="need 2 servers"):
        vector_env_configs(carla, 2)
    with pytest.raises(ValueError, match="host:port"):
        vector_env_configs(carla, 1, ["localhost"])
    with pytest.raises(ValueError, match="distinct"):
        vector_env_configs(carla, 2, ["a:2000", "a:2000"])
    with pytest.raises(ValueError, match="backend 'carla'"):
        vector_env_configs(EnvConfig(), 1, ["a:2000"])
    assert vector_env_configs(EnvConfig(), 2) == [EnvConfig(), EnvConfig()]


def test_action_repeat_holds_the_action_and_sums_the_rewards():
    from jtd3.config import from_dict
    from jtd3.envs import make_env

    one = make_env(from_dict(EnvConfig, {"action_repeat": 1}))
    two = make_env(from_dict(EnvConfig, {"action_repeat": 2}))
    obs1, _ = one.reset(seed=3)
    obs2, _ = two.reset(seed=3)
    np.testing.assert_array_equal(obs1["camera"], obs2["camera"])
    assert two.unwrapped.dt == 2 * one.unwrapped.dt
    frames, rewards = [], []
    for t in range(6):
        a = np.array([0.1 * (t // 2), 0.8], np.float32)  # the same action on the two ticks of a step
        o, r, *_ = one.step(a)
        frames.append(o["camera"][-1])
        rewards.append(r)
        if t % 2 == 1:
            o2, r2, _, _, info2 = two.step(a)
            np.testing.assert_array_equal(o2["kinematics"], o["kinematics"])
            np.testing.assert_array_equal(o2["camera"][-1], o["camera"][-1])
            assert r2 == pytest.approx(rewards[-2] + rewards[-1], abs=1e-9)
            assert sum(info2["reward_components"].values()) == pytest.approx(r2, abs=1e-9)
    # the stack of the repeated env holds one frame per env step: every second tick
    np.testing.assert_array_equal(o2["camera"][1:], np.stack([frames[1], frames[3], frames[5]]))
    assert info2["step"] == 3
    one.close()
    two.close()


@pytest.mark.parametrize("mode", ["failure", "truncation"])
def test_standing_still_ends_the_episode_as_stalled_and_moving_resets_the_clock(mode):
    from jtd3.config import from_dict
    from jtd3.envs import make_env

    env = make_env(from_dict(EnvConfig, {"stall_timeout_s": 1.0, "stall_termination": mode, "action_repeat": 1,
                                         "longitudinal_action": "pedals"}))  # 20 steps of 0.05 s
    env.reset(seed=0)
    for t in range(19):
        _, _, terminated, truncated, info = env.step(np.array([0.0, -1.0], np.float32))
        assert not (terminated or truncated), t
        assert info["reward_components"]["stalled"] == 0.0
    _, _, terminated, truncated, info = env.step(np.array([0.0, -1.0], np.float32))
    assert info["termination_reason"] == "stalled"
    if mode == "failure":  # a failed route: terminal, with the stalled penalty
        assert terminated and not truncated and not info["success"]
        assert info["reward_components"]["stalled"] == -env.unwrapped.config.reward.weights.stalled
    else:  # like the time limit: the TD target bootstraps, no penalty
        assert truncated and not terminated and info["reward_components"]["stalled"] == 0.0
    env.reset(seed=0)
    for t in range(200):  # driving never stalls
        _, _, terminated, truncated, info = env.step(np.array([0.0, 0.4], np.float32))
        if terminated or truncated:
            break
    assert info["termination_reason"] != "stalled"
    env.close()


def test_following_speed_stops_short_of_a_stopped_vehicle_and_grows_with_the_gap():
    kw = dict(min_gap_m=3.0, headway_s=0.5, decel=4.0)
    assert following_speed(3.0, 0.0, **kw) == 0.0 and following_speed(1.0, 0.0, **kw) == 0.0
    v = following_speed(15.0, 0.0, **kw)
    assert v * 0.5 + v * v / 8.0 == pytest.approx(12.0)  # reaction distance + braking distance = the room
    speeds = [following_speed(g, 0.0, **kw) for g in (5.0, 10.0, 20.0, 40.0)]
    assert speeds == sorted(speeds) and speeds[0] > 0
    assert following_speed(5.0, 8.0, **kw) > following_speed(5.0, 0.0, **kw)  # a moving lead leaves more room


def test_curve_cap_brakes_before_the_turn_and_leaves_the_straight_alone():
    ref = load_reference_route()
    full_speed = np.array([0.0, 1.0], np.float32)  # the agent asks for the maximum speed (40 km/h)
    brakes = {}
    for a_lat in (0.0, 5.0):
        for s in (60.0, 218.0):  # the straight; the turn (216-234 m, radius 8 m: capped at 22.7 km/h)
            env, be = double_env(longitudinal_action="target_speed", route_start="beginning",
                                 speed_control={"follow": False, "curve_lateral_accel": a_lat})
            env.reset(seed=0)
            path = [ref.point_at(float(d)) for d in np.arange(10.0, s, 10.0)] + [ref.point_at(s)] * 4
            be.teleports = [(float(x), float(y), float(yaw), 9.0) for x, y, yaw in path]  # 32 km/h
            while be.teleports:
                env.step(full_speed)
            brakes[a_lat, s] = be.controls[-1].brake
    assert brakes[0.0, 60.0] == 0.0 and brakes[5.0, 60.0] == 0.0 and brakes[0.0, 218.0] == 0.0
    assert brakes[5.0, 218.0] > 0.0


def test_follow_caps_the_target_speed_behind_a_vehicle_ahead():
    ref = load_reference_route()
    x, y, _ = ref.point_at(10.0)
    full_speed = np.array([0.0, 1.0], np.float32)  # the agent asks for the maximum speed
    brakes = {}
    for follow in (False, True):
        env, be = double_env(longitudinal_action="target_speed", speed_control={"follow": follow})
        env.reset(seed=0)
        be.npcs = npc(float(x) - 14.0, float(y))  # standing, 14 m ahead (heading west)
        be.teleports = [(float(x), float(y), 180.0, 8.0)]  # 29 km/h
        env.step(full_speed)
        env.step(full_speed)
        brakes[follow] = be.controls[-1].brake
    # sensed gap 14 - 2.4 - 2.0 - 1.0 = 8.6 m: the cap following_speed(8.6, 0) is below the car's 8 m/s
    assert brakes[False] == 0.0 and brakes[True] > 0.0
