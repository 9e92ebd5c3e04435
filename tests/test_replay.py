"""Replay buffer: stacks rebuilt from single frames, episode boundaries, wrap-around, resume, memory refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jtd3.replay import InsufficientMemoryError, ReplayBuffer, ReplayConfig, bytes_per_slot

STACK = 4
SMALL_FRAME = (3, 5)
K = 3


class StackEnv:
    """Observations as the driving env makes them: a stack of the newest frames, oldest first; at reset
    the first frame is repeated. Every frame is random, so a frame from the wrong step is detectable."""

    def __init__(self, seed: int, frame_shape=SMALL_FRAME, k=K, stack=STACK):
        self.rng = np.random.default_rng(seed)
        self.frame_shape, self.k, self.stack = frame_shape, k, stack
        self.frames: list[np.ndarray] = []

    def _obs(self) -> dict:
        return {
            "camera": np.stack(self.frames[-self.stack :]),
            "kinematics": self.rng.normal(size=self.k).astype(np.float32),
        }

    def reset(self) -> dict:
        first = self.rng.integers(0, 256, self.frame_shape, dtype=np.uint8)
        self.frames = [first] * self.stack
        return self._obs()

    def step(self) -> dict:
        self.frames.append(self.rng.integers(0, 256, self.frame_shape, dtype=np.uint8))
        return self._obs()


class Oracle:
    """Independent bookkeeping: every transition with the global write counters its data lives at.

    A transition is intact iff the oldest slot write it depends on (its stack reaches back min(pos, stack-1)
    writes from its own observation) is among the newest ``capacity`` writes."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.writes = 0
        self.open = False
        self.pos = 0
        self.items: list[tuple[int, int, dict]] = []  # (write counter of obs, pos, transition)

    def add(self, obs, action, reward, next_obs, terminated, truncated):
        if not self.open:
            self.writes += 1  # the reset observation
            self.pos = 0
        c = self.writes - 1
        self.items.append(
            (c, self.pos, dict(obs=obs, action=action, reward=reward, next_obs=next_obs, terminated=terminated, truncated=truncated))
        )
        self.writes += 1  # next_obs
        self.pos += 1
        self.open = not (terminated or truncated)

    def interrupt(self):
        self.open = False

    def expected(self) -> dict[int, dict]:
        oldest_kept = self.writes - self.capacity
        out = {}
        for c, pos, tr in self.items:
            if c - min(pos, STACK - 1) >= oldest_kept:
                out[c % self.capacity] = tr
        return out


def assert_transition(batch: dict, i: int, tr: dict) -> None:
    np.testing.assert_array_equal(batch["obs"]["camera"][i], tr["obs"]["camera"])
    np.testing.assert_array_equal(batch["obs"]["kinematics"][i], tr["obs"]["kinematics"])
    np.testing.assert_array_equal(batch["next_obs"]["camera"][i], tr["next_obs"]["camera"])
    np.testing.assert_array_equal(batch["next_obs"]["kinematics"][i], tr["next_obs"]["kinematics"])
    np.testing.assert_array_equal(batch["action"][i], tr["action"])
    assert batch["reward"][i] == np.float32(tr["reward"])
    assert batch["terminated"][i] == float(tr["terminated"])
    assert batch["truncated"][i] == float(tr["truncated"])


def check_against_oracle(buf: ReplayBuffer, oracle: Oracle) -> None:
    expected = oracle.expected()
    slots = np.array(sorted(expected), dtype=np.int64)
    np.testing.assert_array_equal(np.sort(buf.valid_indices()), slots)
    assert len(buf) == len(slots)
    if len(slots):
        batch = buf.gather(slots, include_truncated=True)
        for i, s in enumerate(slots):
            assert_transition(batch, i, expected[int(s)])


def run_episodes(buf, oracle, env, n_steps, rng, *, p_term=0.08, p_trunc=0.08, p_interrupt=0.02):
    obs = env.reset()
    for _ in range(n_steps):
        action = rng.uniform(-1, 1, buf.action_dim).astype(np.float32)
        reward = float(rng.normal())
        next_obs = env.step()
        u = rng.random()
        terminated, truncated = bool(u < p_term), bool(p_term <= u < p_term + p_trunc)
        buf.add(obs, action, reward, next_obs, terminated, truncated)
        if oracle is not None:
            oracle.add(obs, action, reward, next_obs, terminated, truncated)
        if terminated or truncated:
            obs = env.reset()
        elif rng.random() < p_interrupt:  # env reset without an episode end (e.g. after a resume)
            buf.start_new_episode()
            if oracle is not None:
                oracle.interrupt()
            obs = env.reset()
        else:
            obs = next_obs
        yield


def small_buffer(capacity: int, seed: int = 0) -> ReplayBuffer:
    return ReplayBuffer(capacity, frame_shape=SMALL_FRAME, stack=STACK, kinematics_dim=K, action_dim=2, seed=seed)


def test_stacks_never_cross_terminated_or_truncated_boundaries():
    buf, env = small_buffer(64), StackEnv(1)
    added = []
    obs = env.reset()
    # episode A: 3 steps, terminated; episode B: 2 steps, truncated; episode C: 5 steps, open
    for length, end in ((3, "terminated"), (2, "truncated"), (5, None)):
        for t in range(length):
            nxt = env.step()
            last = t == length - 1
            term, trunc = last and end == "terminated", last and end == "truncated"
            tr = dict(obs=obs, action=np.array([t, -t], np.float32), reward=float(t), next_obs=nxt, terminated=term, truncated=trunc)
            buf.add(obs, tr["action"], tr["reward"], nxt, term, trunc)
            added.append(tr)
            obs = env.reset() if (term or trunc) else nxt
    assert len(buf) == 10
    # slots: A = 0..3 (final obs at 3), B = 4..6, C = 7..12; transitions start at every non-final slot
    slots = np.array([0, 1, 2, 4, 5, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(np.sort(buf.valid_indices()), slots)
    batch = buf.gather(slots, include_truncated=True)
    for i, tr in enumerate(added):
        assert_transition(batch, i, tr)
    # first step of B: the stack is B's reset frame repeated, nothing of A
    b0 = batch["obs"]["camera"][3]
    assert (b0 == b0[-1]).all() and not np.array_equal(b0[-1], batch["next_obs"]["camera"][2][-1])
    # the truncated step bootstraps (terminated 0) from the final observation, not from C's reset frame
    assert batch["terminated"][4] == 0.0 and batch["truncated"][4] == 1.0
    assert batch["terminated"][2] == 1.0 and batch["truncated"][2] == 0.0
    assert not np.array_equal(batch["next_obs"]["camera"][4][-1], batch["obs"]["camera"][5][-1])
    # one frame stored per step plus one per episode start: 10 steps, 3 episodes
    assert buf._filled == 13


@pytest.mark.parametrize("capacity", [6, 23])
def test_random_episodes_with_wraparound_match_an_independent_oracle(capacity):
    rng = np.random.default_rng(capacity)
    buf, oracle, env = small_buffer(capacity), Oracle(capacity), StackEnv(capacity + 100)
    for step, _ in enumerate(run_episodes(buf, oracle, env, 600, rng, p_term=0.1, p_trunc=0.1, p_interrupt=0.03)):
        if step % 7 == 0 or step > 560:
            check_against_oracle(buf, oracle)
    assert oracle.writes > 10 * capacity  # wrapped many times
    # sampling draws only intact transitions and reaches all of them
    expected = oracle.expected()
    idx = buf.sample_indices(4000)
    assert set(idx.tolist()) == set(expected)


def n_step_expected(oracle: Oracle, n: int, gamma: float) -> dict[int, dict]:
    """The oracle's n-step transitions: each intact transition runs on through the following steps of its
    episode (the next item continues it when its observation is this one's next_obs) while they are intact,
    stopping after a terminated or truncated step."""
    intact = oracle.expected()
    by_counter = {c: (pos, tr) for c, pos, tr in oracle.items}
    out = {}
    for c, _pos, tr in oracle.items:
        if c % oracle.capacity not in intact or intact[c % oracle.capacity] is not tr:
            continue
        ret, disc, last, k = float(np.float32(tr["reward"])), gamma, tr, 1
        cur = c
        while k < n and not (last["terminated"] or last["truncated"]):
            nxt = by_counter.get(cur + 1)
            if nxt is None or (cur + 1) % oracle.capacity not in intact or intact[(cur + 1) % oracle.capacity] is not nxt[1]:
                break
            ret += disc * float(np.float32(nxt[1]["reward"]))
            disc *= gamma
            last, cur, k = nxt[1], cur + 1, k + 1
        out[c % oracle.capacity] = dict(tr, reward=ret, next_obs=last["next_obs"], terminated=last["terminated"],
                                        truncated=last["truncated"], discount=disc)
    return out


@pytest.mark.parametrize("n", [1, 3])
def test_n_step_transitions_match_an_independent_oracle(n):
    """n-step gather (agent.n_step): discounted reward sums within one episode, the observation n steps on,
    the end flags of the last step, gamma^m; never past an episode's end, an interruption or the newest step,
    also across wrap-around."""
    gamma, capacity = 0.9, 29
    rng = np.random.default_rng(11)
    buf, oracle, env = small_buffer(capacity), Oracle(capacity), StackEnv(7)
    for step, _ in enumerate(run_episodes(buf, oracle, env, 400, rng, p_term=0.05, p_trunc=0.05, p_interrupt=0.03)):
        if step % 13 != 0:
            continue
        expected = n_step_expected(oracle, n, gamma)
        slots = np.array(sorted(expected), dtype=np.int64)
        batch = buf.gather(slots, include_truncated=True, n_step=n, gamma=gamma)
        assert ("discount" in batch) == (n > 1)
        for i, s in enumerate(slots):
            tr = expected[int(s)]
            np.testing.assert_array_equal(batch["obs"]["camera"][i], tr["obs"]["camera"])
            np.testing.assert_array_equal(batch["next_obs"]["camera"][i], tr["next_obs"]["camera"])
            np.testing.assert_array_equal(batch["next_obs"]["kinematics"][i], tr["next_obs"]["kinematics"])
            np.testing.assert_allclose(batch["reward"][i], tr["reward"], rtol=1e-5, atol=1e-5)
            assert batch["terminated"][i] == float(tr["terminated"]) and batch["truncated"][i] == float(tr["truncated"])
            if n > 1:
                np.testing.assert_allclose(batch["discount"][i], tr["discount"], rtol=1e-6)
    # some transitions did run the full n steps, some were cut by an episode end
    if n > 1:
        d = buf.gather(buf.valid_indices(), n_step=n, gamma=gamma)["discount"]
        assert np.isclose(d, gamma**n).any() and (d > gamma**n + 1e-6).any()


def test_sample_matches_the_agent_batch_format():
    k, env = 7, StackEnv(3, frame_shape=(84, 84), k=7)
    buf = ReplayBuffer(300, frame_shape=(84, 84), stack=4, kinematics_dim=k, action_dim=2, seed=0)
    for _ in run_episodes(buf, None, env, 200, np.random.default_rng(0)):
        pass
    batch = buf.sample(256)
    assert set(batch) == {"obs", "action", "reward", "next_obs", "terminated"}
    for key in ("obs", "next_obs"):
        assert set(batch[key]) == {"camera", "kinematics"}
        assert batch[key]["camera"].shape == (256, 4, 84, 84) and batch[key]["camera"].dtype == np.uint8
        assert batch[key]["kinematics"].shape == (256, k) and batch[key]["kinematics"].dtype == np.float32
        assert batch[key]["camera"].flags.c_contiguous
    assert batch["action"].shape == (256, 2) and batch["action"].dtype == np.float32
    assert batch["reward"].shape == (256,) and batch["reward"].dtype == np.float32
    assert batch["terminated"].shape == (256,) and batch["terminated"].dtype == np.float32
    many = buf.sample_many(4, 32)
    assert many["obs"]["camera"].shape == (4, 32, 4, 84, 84)
    assert many["next_obs"]["kinematics"].shape == (4, 32, k)
    assert many["terminated"].shape == (4, 32)
    # the K batches are the consecutive draws of one index vector
    twin = ReplayBuffer(300, frame_shape=(84, 84), stack=4, kinematics_dim=k, action_dim=2, seed=0)
    twin.load_state_dict(buf.state_dict())
    buf2 = buf.sample_many(3, 8)
    idx = twin.sample_indices(24)
    np.testing.assert_array_equal(buf2["obs"]["camera"], twin.gather(idx)["obs"]["camera"].reshape(3, 8, 4, 84, 84))


def test_save_load_round_trip_gives_identical_future(tmp_path):
    rng = np.random.default_rng(5)
    buf, env = small_buffer(40, seed=11), StackEnv(9)
    steps = run_episodes(buf, None, env, 10_000, rng)
    for _ in range(150):  # wrapped, and stopped mid-episode
        next(steps)
    buf.sample(16)  # advance the sampling RNG
    buf.save(tmp_path / "replay")
    copy = small_buffer(40, seed=999)
    copy.load(tmp_path / "replay")
    copy2 = small_buffer(40, seed=123)
    copy2.load_state_dict(buf.state_dict())
    for other in (copy, copy2):
        assert len(other) == len(buf) and other.episode_open == buf.episode_open
        for name in ("frames", "kinematics", "action", "reward", "terminated", "truncated", "valid", "ep_pos"):
            np.testing.assert_array_equal(getattr(other, name)[: buf._filled], getattr(buf, name)[: buf._filled])
    a, b = buf.sample(64), copy.sample(64)
    np.testing.assert_array_equal(a["obs"]["camera"], b["obs"]["camera"])
    np.testing.assert_array_equal(a["reward"], b["reward"])
    # the open episode continues in the loaded copy exactly as in the original
    obs = {"camera": buf.gather(np.array([buf._head - 1]))["next_obs"]["camera"][0], "kinematics": buf.kinematics[buf._head]}
    assert buf.episode_open
    nxt = {"camera": np.concatenate([obs["camera"][1:], np.full((1, *SMALL_FRAME), 7, np.uint8)]), "kinematics": np.ones(K, np.float32)}
    for other in (buf, copy):
        other.add(obs, np.zeros(2, np.float32), 1.0, nxt, False, False)
    np.testing.assert_array_equal(buf.sample_many(2, 16)["next_obs"]["camera"], copy.sample_many(2, 16)["next_obs"]["camera"])
    with pytest.raises(FileExistsError):
        buf.save(tmp_path / "replay")


def test_load_refuses_a_buffer_of_other_sizes(tmp_path):
    buf = small_buffer(40)
    for _ in run_episodes(buf, None, StackEnv(2), 30, np.random.default_rng(2)):
        pass
    buf.save(tmp_path / "r")
    with pytest.raises(ValueError, match=r"capacity = 40, this buffer has 41"):
        small_buffer(41).load(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="no saved replay buffer at"):
        small_buffer(40).load(tmp_path / "missing")


def test_capacity_over_the_memory_limit_is_refused_before_allocation():
    per = bytes_per_slot((84, 84), 10, 2)["total"]
    # 10**12 slots would be ~7 PB: np.zeros itself would fail with NumPy's own error, so getting
    # InsufficientMemoryError shows the check ran first.
    with pytest.raises(InsufficientMemoryError) as info:
        ReplayBuffer(10**12, kinematics_dim=10, memory_limit_bytes=8 * 10**9)
    msg = str(info.value)
    assert f"{per:,} bytes per transition slot" in msg
    assert f"needs {10**12 * per / 1e9:.2f} GB" in msg and "only 8.00 GB are available" in msg
    assert f"largest capacity that fits is {8 * 10**9 // per:,}" in msg
    with pytest.raises(InsufficientMemoryError, match=r"MemAvailable in /proc/meminfo"):
        ReplayBuffer(10**12, kinematics_dim=10)
    ok = ReplayBuffer(1000, kinematics_dim=10, memory_limit_bytes=1000 * per)
    assert ok.nbytes == 1000 * per


def test_one_million_slots_fit_the_budget():
    # 7.3 KB (7300 bytes) per transition allows a kinematic vector of up to 57 floats.
    assert bytes_per_slot((84, 84), 57, 2)["total"] <= 7300 < bytes_per_slot((84, 84), 58, 2)["total"]


def test_add_rejects_steps_that_break_the_stack_contract():
    env, buf = StackEnv(4), small_buffer(30)
    obs = env.reset()
    nxt = env.step()
    act = np.zeros(2, np.float32)
    bad_reset = {"camera": nxt["camera"], "kinematics": nxt["kinematics"]}  # not a repeated frame
    with pytest.raises(ValueError, match="not the reset frame repeated"):
        buf.add(bad_reset, act, 0.0, env.step(), False, False)
    buf.add(obs, act, 0.0, nxt, False, False)
    env5 = StackEnv(5)
    other = env5.reset()
    with pytest.raises(ValueError, match="start_new_episode"):
        buf.add(other, act, 0.0, env5.step(), False, False)
    with pytest.raises(ValueError, match="not a frame stack"):
        buf.add(nxt, act, 0.0, other, False, False)
    with pytest.raises(ValueError, match="dtype float32, expected uint8"):
        buf.add({**nxt, "camera": nxt["camera"].astype(np.float32)}, act, 0.0, env.step(), False, False)
    with pytest.raises(ValueError, match="non-finite"):
        buf.add(nxt, act, float("nan"), env.step(), False, False)
    assert len(buf) == 1
    buf.start_new_episode()
    env2 = StackEnv(6)
    buf.add(env2.reset(), act, 0.0, env2.step(), True, False)
    assert len(buf) == 2
    with pytest.raises(ValueError, match="no complete transition"):
        small_buffer(30).sample(1)


def test_from_spaces_and_config_derive_the_sizes():
    gym = pytest.importorskip("gymnasium")
    obs_space = gym.spaces.Dict(
        {
            "camera": gym.spaces.Box(0, 255, (4, 84, 84), np.uint8),
            "kinematics": gym.spaces.Box(-np.inf, np.inf, (9,), np.float32),
        }
    )
    act_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    buf = ReplayBuffer.from_config(ReplayConfig(capacity=100), obs_space, act_space, seed=1)
    assert (buf.capacity, buf.stack, buf.frame_shape, buf.kinematics_dim, buf.action_dim) == (100, 4, (84, 84), 9, 2)
    assert buf.nbytes == 100 * bytes_per_slot((84, 84), 9, 2)["total"]
    with pytest.raises(ValueError, match="kinematics space must be float32"):
        bad = gym.spaces.Dict({"camera": obs_space["camera"], "kinematics": gym.spaces.Box(0, 1, (9,), np.float64)})
        ReplayBuffer.from_spaces(100, bad, act_space)


class _StreamView:
    """Adapts ``run_episodes`` (one env, one buffer) to one stream of a multi-stream buffer."""

    def __init__(self, buf: ReplayBuffer, stream: int):
        self.buf, self.stream, self.action_dim = buf, stream, buf.action_dim

    def add(self, *args):
        self.buf.add(*args, stream=self.stream)

    def start_new_episode(self):
        self.buf.start_new_episode(self.stream)


@pytest.mark.parametrize("capacity", [3 * 9 + 2, 3 * 40])
def test_streams_interleaved_step_by_step_keep_each_environment_s_stacks(capacity):
    """Three environments adding in random order (as the trainer's N envs do): every stream's transitions match
    its own oracle (stacks never mix streams, also after each region wrapped around), the remainder slots
    stay unused, and sampling reaches every intact transition of every stream."""
    streams = 3
    buf = ReplayBuffer(capacity, frame_shape=SMALL_FRAME, stack=STACK, kinematics_dim=K, action_dim=2, seed=1,
                       streams=streams)
    region = capacity // streams
    oracles = [Oracle(region) for _ in range(streams)]
    runs = [run_episodes(_StreamView(buf, i), oracles[i], StackEnv(40 + i), 10_000, np.random.default_rng(i),
                         p_term=0.06, p_trunc=0.06, p_interrupt=0.03) for i in range(streams)]
    order = np.random.default_rng(9)
    for step in range(900):
        next(runs[int(order.integers(streams))])
        if step % 37 == 0 or step > 880:
            expected = {i * region + s: tr for i, o in enumerate(oracles) for s, tr in o.expected().items()}
            slots = np.array(sorted(expected), dtype=np.int64)
            np.testing.assert_array_equal(np.sort(buf.valid_indices()), slots)
            batch = buf.gather(slots, include_truncated=True)
            for j, s in enumerate(slots):
                assert_transition(batch, j, expected[int(s)])
    assert all(o.writes > 3 * region for o in oracles)  # every region wrapped
    assert not buf.valid[streams * region:].any()
    assert set(buf.sample_indices(6000).tolist()) == set(expected)


def test_streams_n_step_returns_stop_at_their_own_stream_s_newest_step():
    """An n-step return runs on inside its own stream: the slot after a stream's newest observation may hold
    another stream's data (or an older lap), never read as a continuation."""
    gamma = 0.5
    buf = ReplayBuffer(2 * 20, frame_shape=SMALL_FRAME, stack=STACK, kinematics_dim=K, action_dim=2, streams=2)
    envs = [StackEnv(1), StackEnv(2)]
    obs = [e.reset() for e in envs]
    for t in range(5):
        for i in (0, 1):
            nxt = envs[i].step()
            buf.add(obs[i], np.zeros(2, np.float32), float(10 * i + t), nxt, False, False, stream=i)
            obs[i] = nxt
    batch = buf.gather(np.array([3, 20 + 3]), n_step=4, gamma=gamma)
    # stream 0, slot 3: rewards 3, 4 then the newest step; stream 1 the same with 13, 14
    np.testing.assert_allclose(batch["reward"], [3 + 0.5 * 4, 13 + 0.5 * 14])
    np.testing.assert_allclose(batch["discount"], [gamma**2, gamma**2])
    np.testing.assert_array_equal(batch["next_obs"]["camera"][1], obs[1]["camera"])


def test_streams_save_load_and_version_1_files_still_load(tmp_path):
    buf = ReplayBuffer(60, frame_shape=SMALL_FRAME, stack=STACK, kinematics_dim=K, action_dim=2, seed=3, streams=2)
    runs = [run_episodes(_StreamView(buf, i), None, StackEnv(i), 10_000, np.random.default_rng(i)) for i in (0, 1)]
    for _ in range(70):
        next(runs[0]), next(runs[1])
    buf.save(tmp_path / "two")
    copy = ReplayBuffer(60, frame_shape=SMALL_FRAME, stack=STACK, kinematics_dim=K, action_dim=2, seed=0, streams=2)
    copy.load(tmp_path / "two")
    assert [copy.is_episode_open(i) for i in (0, 1)] == [buf.is_episode_open(i) for i in (0, 1)]
    np.testing.assert_array_equal(copy.sample(32)["obs"]["camera"], buf.sample(32)["obs"]["camera"])
    with pytest.raises(ValueError, match="streams = 2, this buffer has 1"):
        small_buffer(60).load(tmp_path / "two")
    # a buffer saved by the one-stream format (version 1, replay checkpoints before streams) loads
    one = small_buffer(40, seed=4)
    for _ in run_episodes(one, None, StackEnv(5), 55, np.random.default_rng(5)):
        pass
    one.save(tmp_path / "v1")
    meta = json.loads((tmp_path / "v1" / "meta.json").read_text())
    v1 = {k: v for k, v in meta.items() if k not in ("streams", "heads", "fills", "episode_open")}
    v1.update(format_version=1, head=meta["heads"][0], episode_open=meta["episode_open"][0])
    (tmp_path / "v1" / "meta.json").write_text(json.dumps(v1))
    old = small_buffer(40, seed=0)
    old.load(tmp_path / "v1")
    assert len(old) == len(one) and old.episode_open == one.episode_open
    np.testing.assert_array_equal(old.sample(16)["next_obs"]["camera"], one.sample(16)["next_obs"]["camera"])
