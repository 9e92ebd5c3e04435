"""TD3 agent: shapes for every norm x topology, the TD3 invariants, BatchNorm handling, checkpoints, config.

Compiles dominate the run time: each (norm, encoder) pair compiles `update` once (module-level cache) and the
invariant tests reuse those compiled functions on a batch of 4.
"""

import dataclasses
import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from gymnasium import spaces

from jtd3 import agent
from jtd3.agent import AgentConfig
from jtd3.agent.diagnostics import FEATURE_STATS
from jtd3.agent.learn import encode, smoothed_target_action, td_target
from jtd3.agent.networks import NORMS
from jtd3.agent.state import NetState, make_optimizer, modules
from jtd3.config import ConfigError, from_dict, track_reads

B, KIN = 4, 5
OBS_SPACE = spaces.Dict(
    {
        "camera": spaces.Box(0, 255, (4, 84, 84), np.uint8),
        "kinematics": spaces.Box(-np.inf, np.inf, (KIN,), np.float32),
    }
)
ACT_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)
ENCODERS = ("separate", "shared")  # jtd3's wirings; "original" (the PyTorch original's) has its own tests below
ALL_ENCODERS = (*ENCODERS, "original")
CRITIC_KEYS = {
    "losses/critic_loss", "losses/q1_mean", "losses/q2_mean", "losses/target_q_mean", "losses/td_error",
    "losses/actor_loss", "losses/actor_q", "losses/actor_updates",
    "debug/actor_q_max", "debug/actor_q_min", "debug/actor_q_on_critic_features",
    "grad_norm/critic_cnn", "grad_norm/critic_mlp", "grad_norm/actor_mlp",
    "param_norm/critic_cnn", "param_norm/critic_mlp", "param_norm/actor_mlp",
}  # fmt: skip
ACTOR_ONLY = {
    "losses/actor_loss", "losses/actor_q", "grad_norm/actor_mlp", "grad_norm/actor_cnn", "debug/actor_q_max",
    "debug/actor_q_min", "debug/actor_q_on_critic_features",
}  # fmt: skip


def expected_keys(encoder: str) -> set[str]:
    keys = set(CRITIC_KEYS) | {f"debug/critic_cnn_features_{s}" for s in FEATURE_STATS}
    if encoder in ("separate", "original"):
        keys |= {"grad_norm/actor_cnn", "param_norm/actor_cnn"}
        keys |= {f"debug/actor_cnn_features_{s}" for s in FEATURE_STATS}
    return keys


def make_batch(seed: int = 0, batch: int = B, terminated=None) -> dict:
    rng = np.random.default_rng(seed)

    def obs():
        return {
            "camera": jnp.asarray(rng.integers(0, 256, (batch, 4, 84, 84), dtype=np.uint8)),
            "kinematics": jnp.asarray(rng.standard_normal((batch, KIN)), jnp.float32),
        }

    term = (rng.random(batch) < 0.5) if terminated is None else np.full(batch, terminated)
    return {
        "obs": obs(),
        "action": jnp.asarray(rng.uniform(-1, 1, (batch, 2)), jnp.float32),
        "reward": jnp.asarray(rng.standard_normal(batch), jnp.float32),
        "next_obs": obs(),
        "terminated": jnp.asarray(term, jnp.float32),
    }


@functools.lru_cache(maxsize=None)
def run(norm: str, encoder: str) -> dict:
    """create -> update (step 0: critic only) -> update (step 1: critic + actor + targets), cached."""
    s0 = agent.create(AgentConfig(norm=norm, encoder=encoder), OBS_SPACE, ACT_SPACE, seed=0)
    batch = make_batch(0)
    s1, m1 = agent.update(s0, batch)
    s2, m2 = agent.update(s1, batch)
    return {"s0": s0, "s1": s1, "s2": s2, "m1": m1, "m2": m2, "batch": batch}


def assert_trees_differ(a, b, what):
    same = jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))
    assert not all(same), f"{what} did not change"


# ----------------------------------------------------------------------------------------------------------
# Shapes and finiteness, every norm x topology


@pytest.mark.parametrize(
    ("norm", "encoder"),
    [(n, e) for e in ENCODERS for n in NORMS] + [("layernorm", "original"), ("batchnorm", "original")],
)
def test_update_and_act_shapes_and_finiteness(norm, encoder):
    r = run(norm, encoder)
    s0, s2 = r["s0"], r["s2"]
    for m in (r["m1"], r["m2"]):
        assert set(m) == expected_keys(encoder)
        chex.assert_tree_all_finite(m)
        chex.assert_rank(list(m.values()), 0)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.tree.leaves(s0), jax.tree.leaves(s2)
    )  # the state keeps its structure
    chex.assert_tree_all_finite(jax.tree.leaves(s2))
    assert int(s2.step) == 2 and int(s2.actor.step) == 1 and s2.key.dtype == jnp.uint32  # policy_delay 2
    actions = agent.act(s2, r["batch"]["obs"], jax.random.key(1), 0.3)
    chex.assert_shape(actions, (B, 2))
    assert bool(jnp.all(jnp.abs(actions) <= 1.0))
    # the actor reads its encoder (separate, original) or the critic's encoder (shared)
    assert ("encoder" in s2.actor.params) == (encoder != "shared")
    # target encoders exist in jtd3's wirings only; the original had target copies of the MLP heads alone
    assert ("encoder" in s2.critic.target_params) == (encoder != "original")


# ----------------------------------------------------------------------------------------------------------
# TD3 invariants


@pytest.mark.parametrize("encoder", ALL_ENCODERS)
def test_policy_delay_critic_steps_do_not_touch_actor_or_targets(encoder):
    r = run("layernorm", encoder)
    s0, s1, s2, m1, m2 = r["s0"], r["s1"], r["s2"], r["m1"], r["m2"]
    # step 0 is not a policy step: the critic loss moved only critic parameters
    chex.assert_trees_all_equal(s1.actor.params, s0.actor.params)
    chex.assert_trees_all_equal(s1.actor.opt_state, s0.actor.opt_state)
    chex.assert_trees_all_equal(s1.actor.target_params, s0.actor.target_params)
    chex.assert_trees_all_equal(s1.critic.target_params, s0.critic.target_params)
    assert_trees_differ(s1.critic.params, s0.critic.params, "critic params after a critic step")
    assert float(m1["losses/actor_updates"]) == 0.0
    assert all(float(m1[k]) == 0.0 for k in ACTOR_ONLY & set(m1))
    # step 1 is a policy step: actor and both targets move
    assert float(m2["losses/actor_updates"]) == 1.0
    assert_trees_differ(s2.actor.params, s1.actor.params, "actor params on a policy step")
    assert_trees_differ(s2.actor.target_params, s1.actor.target_params, "actor target on a policy step")
    assert_trees_differ(s2.critic.target_params, s1.critic.target_params, "critic target on a policy step")


@pytest.mark.parametrize("encoder", ALL_ENCODERS)
def test_actor_loss_never_moves_critic_parameters(encoder):
    """The same critic step with and without the actor step after it leaves identical critic parameters:
    in `shared` mode the actor loss does not move the encoder, in `separate` mode not the critic encoder, in
    `original` mode (Q1 scored on actor-encoder features) not Q1's head."""
    r = run("layernorm", encoder)
    policy_state = r["s1"]  # step 1: a policy step
    critic_only_state = policy_state.replace(critic=policy_state.critic.replace(step=jnp.zeros((), jnp.int32)))  # step 0: critic only
    a, ma = agent.update(policy_state, r["batch"])
    b, mb = agent.update(critic_only_state, r["batch"])
    assert float(ma["losses/actor_updates"]) == 1.0 and float(mb["losses/actor_updates"]) == 0.0
    chex.assert_trees_all_equal(a.critic.params, b.critic.params)
    chex.assert_trees_all_equal(a.critic.opt_state, b.critic.opt_state)
    chex.assert_trees_all_equal(a.critic.batch_stats, b.critic.batch_stats)
    assert_trees_differ(a.actor.params, b.actor.params, "actor params")


def test_separate_actor_encoder_learns_only_through_the_action():
    """Q is evaluated on the critic encoder's features, never on the actor encoder's (the original bug).

    If the actor head ignores its features, the actor's action does not depend on the actor encoder, so the
    actor loss gradient w.r.t. the actor encoder must be exactly zero; had Q read actor-encoder features, it
    would not be.
    """
    r = run("layernorm", "separate")
    state, batch = r["s1"], r["batch"]
    _, m = agent.update(state, batch)
    assert float(m["grad_norm/actor_cnn"]) > 0.0  # normally the encoder learns, through the action
    blind_state = _blind_actor(state)
    new, m = agent.update(blind_state, batch)
    assert float(m["grad_norm/actor_cnn"]) == 0.0, float(m["grad_norm/actor_cnn"])
    chex.assert_trees_all_equal(new.actor.params["encoder"], state.actor.params["encoder"])

    # The actor's Q is Q1(critic features of obs (pre-update encoder, train mode), pi(actor features)) with the
    # updated critic heads: recompute it independently.
    spec, mods = state.spec, modules(state.spec)
    obs = batch["obs"]
    c_feats = encode(spec, state.critic.params["encoder"], {}, obs["camera"], True)[0]
    a_feats = encode(spec, state.actor.params["encoder"], {}, obs["camera"], True)[0]
    pi = mods.actor_head.apply({"params": state.actor.params["head"]}, a_feats, obs["kinematics"])
    new, m = agent.update(state, batch)
    q1 = mods.critic_head.apply({"params": new.critic.params["head"]}, c_feats, obs["kinematics"], pi)[0]
    np.testing.assert_allclose(float(m["losses/actor_q"]), float(jnp.mean(q1)), rtol=1e-4)
    np.testing.assert_allclose(float(m["losses/actor_loss"]), -float(jnp.mean(q1)), rtol=1e-4)


def _blind_actor(state):
    """The state with an actor head that ignores the encoder features (the action then does not depend on the
    actor encoder): a zero trunk kernel (the trunk then outputs tanh(LayerNorm(0)) = 0), or without a trunk
    zero rows for the features in the first layer."""
    head = state.actor.params["head"]
    if "trunk" in head:
        fc = head["trunk"]["fc"]
        blind_head = {**head, "trunk": {**head["trunk"], "fc": {**fc, "kernel": jnp.zeros_like(fc["kernel"])}}}
    else:
        kernel = head["mlp"]["fc0"]["kernel"]
        blind = kernel.at[: state.spec.config.features_dim].set(0.0)
        blind_head = {"mlp": {**head["mlp"], "fc0": {**head["mlp"]["fc0"], "kernel": blind}}}
    return state.replace(actor=state.actor.replace(params={**state.actor.params, "head": blind_head}))


def test_original_actor_loss_scores_q1_on_the_actor_encoders_features():
    """`original`: the actor loss is -mean Q1(actor_features, pi(actor_features)) with Q1's head held; the actor
    encoder learns through Q1's state input too (the original's bug, reproduced on purpose)."""
    r = run("layernorm", "original")
    state, batch = r["s1"], r["batch"]  # the update with index 1 is a policy step
    spec, mods = state.spec, modules(state.spec)
    obs = batch["obs"]

    # With an actor head blind to its features the action does not depend on the actor encoder, yet the
    # encoder still gets a gradient and moves: it flows through Q1's state input (in `separate` it is exactly 0).
    blind = _blind_actor(state)
    new, m = agent.update(blind, batch)
    assert float(m["grad_norm/actor_cnn"]) > 0.0
    assert_trees_differ(new.actor.params["encoder"], blind.actor.params["encoder"], "actor encoder (blind head)")

    # Independent recomputation of the loss, of the actor-side and critic-side Q and of the actor-encoder
    # gradient, with the critic heads after this step's critic update.
    new, m = agent.update(state, batch)
    q_head = {"params": new.critic.params["head"]}

    def loss(ap, through_state_input=True):
        feats = encode(spec, ap["encoder"], {}, obs["camera"], True)[0]
        pi = mods.actor_head.apply({"params": ap["head"]}, feats, obs["kinematics"])
        q_feats = feats if through_state_input else jax.lax.stop_gradient(feats)
        return -jnp.mean(mods.critic_head.apply(q_head, q_feats, obs["kinematics"], pi)[0])

    np.testing.assert_allclose(float(m["losses/actor_loss"]), float(loss(state.actor.params)), rtol=1e-4)
    np.testing.assert_allclose(float(m["losses/actor_q"]), -float(loss(state.actor.params)), rtol=1e-4)
    grads = jax.grad(loss)(state.actor.params)
    global_norm = optax.tree_utils.tree_norm

    np.testing.assert_allclose(float(m["grad_norm/actor_cnn"]), float(global_norm(grads["encoder"])), rtol=1e-3)
    action_only = jax.grad(functools.partial(loss, through_state_input=False))(state.actor.params)
    assert abs(float(global_norm(action_only["encoder"])) - float(global_norm(grads["encoder"]))) > 1e-3 * float(
        global_norm(grads["encoder"])
    ), "the actor-encoder gradient did not include the path through Q1's state input"
    # The critic-side Q of the same actions: Q1 on the critic encoder's (pre-update) features.
    a_feats = encode(spec, state.actor.params["encoder"], {}, obs["camera"], True)[0]
    pi = mods.actor_head.apply({"params": state.actor.params["head"]}, a_feats, obs["kinematics"])
    c_feats = encode(spec, state.critic.params["encoder"], {}, obs["camera"], True)[0]
    q_critic = mods.critic_head.apply(q_head, c_feats, obs["kinematics"], pi)[0]
    np.testing.assert_allclose(float(m["debug/actor_q_on_critic_features"]), float(jnp.mean(q_critic)), rtol=1e-4)
    q_actor = mods.critic_head.apply(q_head, a_feats, obs["kinematics"], pi)[0]
    np.testing.assert_allclose(float(m["debug/actor_q_max"]), float(jnp.max(q_actor)), rtol=1e-4)
    np.testing.assert_allclose(float(m["debug/actor_q_min"]), float(jnp.min(q_actor)), rtol=1e-4)


def test_jtd3_wirings_score_the_policy_on_critic_features_only():
    """In `separate` and `shared` the Q the actor maximises is the critic-side Q of its actions."""
    for encoder in ENCODERS:
        m = run("layernorm", encoder)["m2"]
        assert float(m["losses/actor_q"]) == float(m["debug/actor_q_on_critic_features"])
        assert float(m["debug/actor_q_min"]) <= float(m["losses/actor_q"]) <= float(m["debug/actor_q_max"])


def test_original_td_target_uses_the_online_critic_encoder_and_the_target_heads():
    """`original` has no target encoders: the TD target runs the online critic encoder (running averages) on
    next_obs and feeds the target actor head and the target Q heads."""
    r = run("layernorm", "original")
    state = r["s2"]  # after a policy step: the target heads differ from the online ones
    assert set(state.actor.target_params) == {"head"} and set(state.critic.target_params) == {"head"}
    assert state.actor.target_batch_stats == {} and state.critic.target_batch_stats == {}
    assert_trees_differ(state.critic.target_params["head"], state.critic.params["head"], "target vs online heads")
    batch = make_batch(3, terminated=0.0)
    _, m = agent.update(state, batch)

    spec, mods, cfg = state.spec, modules(state.spec), state.spec.config
    _, k_noise = jax.random.split(jax.random.wrap_key_data(state.key))
    nxt = batch["next_obs"]
    feats = encode(spec, state.critic.params["encoder"], {}, nxt["camera"], False)[0]
    a = mods.actor_head.apply({"params": state.actor.target_params["head"]}, feats, nxt["kinematics"])
    a = smoothed_target_action(a, k_noise, cfg.policy_noise, cfg.noise_clip)
    q = mods.critic_head.apply({"params": state.critic.target_params["head"]}, feats, nxt["kinematics"], a)
    expected = batch["reward"] + cfg.gamma * jnp.min(q, axis=0)
    np.testing.assert_allclose(float(m["losses/target_q_mean"]), float(jnp.mean(expected)), rtol=1e-5)
    # ... and it really reads the online critic encoder: swap in another encoder and the target changes.
    swapped = state.replace(critic=state.critic.replace(params={**state.critic.params, "encoder": state.actor.params["encoder"]}))
    _, m_swapped = agent.update(swapped, batch)
    assert abs(float(m_swapped["losses/target_q_mean"]) - float(m["losses/target_q_mean"])) > 1e-4


@pytest.mark.parametrize("encoder", ALL_ENCODERS)
def test_polyak_target_update(encoder):
    r = run("layernorm", encoder)
    s1, s2 = r["s1"], r["s2"]
    tau = s1.spec.config.tau
    for online, old, new in (
        (s2.actor.params, s1.actor.target_params, s2.actor.target_params),
        (s2.critic.params, s1.critic.target_params, s2.critic.target_params),
    ):
        online = {k: online[k] for k in old}  # original: the targets are the heads only
        expected = jax.tree.map(lambda o, t: tau * o + (1 - tau) * t, online, old)
        chex.assert_trees_all_close(new, expected, rtol=1e-6, atol=1e-7)
    x, y = {"a": jnp.array([2.0, 4.0])}, {"a": jnp.array([0.0, 8.0])}
    chex.assert_trees_all_close(optax.incremental_update(x, y, 0.25), {"a": jnp.array([0.5, 7.0])})
    chex.assert_trees_all_close(optax.incremental_update(x, y, 1.0), x)


def test_target_policy_smoothing_noise_is_clipped():
    key = jax.random.key(0)
    zeros = jnp.zeros((1000, 2))
    out = smoothed_target_action(zeros, key, policy_noise=10.0, noise_clip=0.5)
    assert float(jnp.max(jnp.abs(out))) == pytest.approx(0.5)  # clipped, and the clip is reached
    assert float(jnp.mean(jnp.abs(out) == 0.5)) > 0.9
    near_edge = smoothed_target_action(jnp.full((1000, 2), 0.9), key, 0.2, 0.5)
    assert float(jnp.max(near_edge)) <= 1.0 and float(jnp.min(near_edge)) >= 0.4 - 1e-6
    small = smoothed_target_action(zeros, key, policy_noise=0.2, noise_clip=0.5)
    assert 0.15 < float(jnp.std(small)) < 0.2  # N(0, 0.2^2) clipped at 2.5 sigma
    chex.assert_trees_all_equal(smoothed_target_action(zeros + 0.3, key, 0.0, 0.5), zeros + 0.3)


def test_terminated_stops_bootstrap_and_truncation_does_not():
    reward = jnp.array([1.0, 1.0, -2.0])
    next_q = jnp.array([[2.0, 5.0, 1.0], [3.0, 4.0, -1.0]])  # (heads, B): min = [2, 4, -1]
    y = td_target(reward, jnp.array([1.0, 0.0, 0.0]), next_q, 0.99)
    np.testing.assert_allclose(y, [1.0, 1.0 + 0.99 * 4.0, -2.0 - 0.99])

    # In the full update: all-terminated targets are the rewards; truncated transitions (terminated = 0, as
    # the batch carries no truncation flag) bootstrap from the target networks with smoothed actions.
    r = run("layernorm", "separate")
    state = r["s0"]
    done = make_batch(3, terminated=1.0)
    _, m = agent.update(state, done)
    assert float(m["losses/target_q_mean"]) == pytest.approx(float(jnp.mean(done["reward"])), abs=1e-6)

    truncated = make_batch(3, terminated=0.0)
    _, m = agent.update(state, truncated)
    spec, mods, cfg = state.spec, modules(state.spec), state.spec.config
    _, k_noise = jax.random.split(jax.random.wrap_key_data(state.key))
    nxt = truncated["next_obs"]
    c_next = encode(spec, state.critic.target_params["encoder"], {}, nxt["camera"], False)[0]
    a_next = encode(spec, state.actor.target_params["encoder"], {}, nxt["camera"], False)[0]
    a = mods.actor_head.apply({"params": state.actor.target_params["head"]}, a_next, nxt["kinematics"])
    a = smoothed_target_action(a, k_noise, cfg.policy_noise, cfg.noise_clip)
    q = mods.critic_head.apply({"params": state.critic.target_params["head"]}, c_next, nxt["kinematics"], a)
    expected = truncated["reward"] + cfg.gamma * jnp.min(q, axis=0)
    np.testing.assert_allclose(float(m["losses/target_q_mean"]), float(jnp.mean(expected)), rtol=1e-5)
    assert abs(float(jnp.mean(expected - truncated["reward"]))) > 1e-3  # it really bootstrapped


def test_n_step_batches_bootstrap_with_their_own_discount():
    """agent.n_step > 1: the batch carries "discount" (gamma^m per sample, from the replay) and the TD target
    uses it in place of gamma: discount = gamma reproduces the 1-step update exactly, discount 0 makes the
    target the (summed) reward. A batch that does not match agent.n_step is refused (a wiring bug)."""
    one = run("layernorm", "shared")["s0"]
    n3 = agent.create(dataclasses.replace(one.spec.config, n_step=3), OBS_SPACE, ACT_SPACE, seed=0)
    chex.assert_trees_all_equal(n3.critic.params, one.critic.params)  # same networks, same init
    batch = make_batch(4, terminated=0.0)
    _, m_plain = agent.update(one, batch)
    gamma = one.spec.config.gamma
    _, m_same = agent.update(n3, {**batch, "discount": jnp.full((B,), gamma, jnp.float32)})
    np.testing.assert_allclose(float(m_same["losses/target_q_mean"]), float(m_plain["losses/target_q_mean"]), rtol=1e-6)
    _, m_zero = agent.update(n3, {**batch, "discount": jnp.zeros((B,), jnp.float32)})
    assert float(m_zero["losses/target_q_mean"]) == pytest.approx(float(jnp.mean(batch["reward"])), abs=1e-6)
    with pytest.raises(ValueError, match=r"discount"):
        agent.update(n3, {**batch, "discount": jnp.zeros((B + 1,), jnp.float32)})
    with pytest.raises(ValueError, match=r"n_step = 3.*no discount"):
        agent.update(n3, batch)
    with pytest.raises(ValueError, match=r"n_step = 1.*a discount"):
        agent.update(one, {**batch, "discount": jnp.zeros((B,), jnp.float32)})


def test_critic_loss_decreases_on_a_fixed_batch():
    r = run("layernorm", "shared")
    state, batch = r["s0"], make_batch(7)
    losses = []
    for _ in range(30):
        state, m = agent.update(state, batch)
        losses.append(float(m["losses/critic_loss"]))
    assert losses[-1] < 0.2 * losses[0], losses


def test_update_many_matches_repeated_update():
    r = run("layernorm", "separate")
    state = r["s0"]
    batches = [make_batch(10 + i) for i in range(4)]
    singles, s = [], state
    for b in batches:
        s, m = agent.update(s, b)
        singles.append(m)
    many_state, many = agent.update_many(state, jax.tree.map(lambda *x: jnp.stack(x), *batches))
    chex.assert_trees_all_close(jax.tree.leaves(many_state), jax.tree.leaves(s), rtol=2e-5, atol=1e-6)
    assert set(many) == set(singles[0])
    stack = {k: np.array([float(m[k]) for m in singles]) for k in many}
    policy = stack["losses/actor_updates"] > 0
    np.testing.assert_array_equal(policy, [False, True, False, True])
    assert float(many["losses/actor_updates"]) == 2.0
    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
    close(float(many["losses/critic_loss"]), stack["losses/critic_loss"].mean())
    close(float(many["debug/critic_cnn_features_l2_norm_max"]), stack["debug/critic_cnn_features_l2_norm_max"].max())
    close(float(many["debug/critic_cnn_features_min"]), stack["debug/critic_cnn_features_min"].min())
    close(float(many["losses/actor_loss"]), stack["losses/actor_loss"][policy].mean())  # policy steps only
    name = "debug/actor_cnn_features_l2_norm_max"
    close(float(many[name]), stack[name][policy].max())


# ----------------------------------------------------------------------------------------------------------
# BatchNorm, acting, checkpoints


def test_batchnorm_running_stats_targets_and_eval_mode():
    r = run("batchnorm", "separate")
    s0, s1, s2 = r["s0"], r["s1"], r["s2"]
    tau = s0.spec.config.tau
    assert_trees_differ(s1.critic.batch_stats, s0.critic.batch_stats, "online critic BatchNorm stats after a critic step")
    chex.assert_trees_all_equal(s1.actor.batch_stats, s0.actor.batch_stats)  # the actor encoder ran only on step 1
    chex.assert_trees_all_equal(s1.critic.target_batch_stats, s0.critic.target_batch_stats)
    assert_trees_differ(s2.actor.batch_stats, s1.actor.batch_stats, "online actor BatchNorm stats on a policy step")
    for online, old, new in (
        (s2.critic.batch_stats, s1.critic.target_batch_stats, s2.critic.target_batch_stats),
        (s2.actor.batch_stats, s1.actor.target_batch_stats, s2.actor.target_batch_stats),
    ):
        assert_trees_differ(new, old, "target BatchNorm stats on a policy step")
        chex.assert_trees_all_close(new, jax.tree.map(lambda o, t: tau * o + (1 - tau) * t, online, old), rtol=1e-6)

    # acting uses running averages: per-sample deterministic, independent of the rest of the batch
    obs = r["batch"]["obs"]
    perm = jnp.array([3, 1, 0, 2])
    a = agent.act(s2, obs, jax.random.key(0), 0.0)
    chex.assert_trees_all_equal(a, agent.act(s2, obs, jax.random.key(5), 0.0))
    permuted = jax.tree.map(lambda x: x[perm], obs)
    chex.assert_trees_all_close(agent.act(s2, permuted, jax.random.key(0), 0.0), a[perm], atol=1e-6)


def test_act_noise_and_key_forms():
    r = run("layernorm", "shared")
    state, obs = r["s2"], r["batch"]["obs"]
    clean = agent.act(state, obs, jax.random.key(0), 0.0)
    noisy = agent.act(state, obs, jax.random.key(0), 0.5)
    assert not np.allclose(clean, noisy)
    assert bool(jnp.all(jnp.abs(noisy) <= 1.0))
    chex.assert_trees_all_equal(noisy, agent.act(state, obs, jax.random.key_data(jax.random.key(0)), 0.5))


def test_checkpoint_restore_reproduces_training_bit_for_bit(tmp_path):
    r = run("batchnorm", "separate")
    state, batch = r["s1"], make_batch(4)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.fspath(tmp_path / "ckpt"), state)
    checkpointer.wait_until_finished()
    fresh = agent.create(state.spec.config, OBS_SPACE, ACT_SPACE, seed=123)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)
    restored = checkpointer.restore(os.fspath(tmp_path / "ckpt"), abstract)
    chex.assert_trees_all_equal(restored, state)
    a, ma = agent.update(state, batch)
    b, mb = agent.update(restored, batch)
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal(ma, mb)


@pytest.mark.parametrize("encoder", ALL_ENCODERS)
def test_format_1_checkpoints_load_into_the_nested_state(tmp_path, monkeypatch, encoder):
    """A checkpoint of the flat format-1 layout (``actor_params``, ``critic_opt_state``, ...; here written by
    saving :func:`to_flat_v1` under version 1) restores into the nested state; the actor's update count is
    derived from the policy delay."""
    from jtd3 import checkpoint
    from jtd3.agent.state import to_flat_v1

    state = run("batchnorm", encoder)["s2"]  # two updates, policy_delay 2: one actor update
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)
    with checkpoint.CheckpointStore(tmp_path, "new", save_replay=False) as store:
        store.save(2, to_flat_v1(state), {})
    fresh = agent.create(state.spec.config, OBS_SPACE, ACT_SPACE, seed=7)
    with checkpoint.CheckpointStore(tmp_path, "read") as store:
        restored = store.restore(fresh).train_state
    chex.assert_trees_all_equal(restored, state)
    assert int(restored.step) == 2 and int(restored.actor.step) == 1 and restored.actor.tx is fresh.actor.tx


# ----------------------------------------------------------------------------------------------------------
# Construction, optimisers, configuration, bad input


def test_sizes_come_from_the_spaces():
    obs_space = spaces.Dict(
        {"camera": spaces.Box(0, 255, (3, 84, 84), np.uint8), "kinematics": spaces.Box(-1, 1, (7,), np.float32)}
    )
    cfg = AgentConfig(encoder="separate", features_dim=64, actor_hidden=(32,), trunk_dim=20)
    state = agent.create(cfg, obs_space, spaces.Box(-1, 1, (3,)), 0)
    chex.assert_shape(state.actor.params["encoder"]["conv1"]["kernel"], (8, 8, 3, 32))
    chex.assert_shape(state.actor.params["head"]["trunk"]["fc"]["kernel"], (64, 20))
    chex.assert_shape(state.actor.params["head"]["mlp"]["fc0"]["kernel"], (20 + 7, 32))
    chex.assert_shape(state.actor.params["head"]["mlp"]["out"]["kernel"], (32, 3))
    chex.assert_shape(state.critic.params["head"]["q"]["trunk"]["fc"]["kernel"], (2, 64, 20))
    chex.assert_shape(state.critic.params["head"]["q"]["mlp"]["fc0"]["kernel"], (2, 20 + 7 + 3, 256))
    flat = agent.create(dataclasses.replace(cfg, trunk_dim=0), obs_space, spaces.Box(-1, 1, (3,)), 0)
    assert "trunk" not in flat.actor.params["head"] and "trunk" not in flat.critic.params["head"]["q"]
    chex.assert_shape(flat.critic.params["head"]["q"]["mlp"]["fc0"]["kernel"], (2, 64 + 7 + 3, 256))
    assert (state.spec.camera_shape, state.spec.kinematics_dim, state.spec.action_dim) == ((3, 84, 84), 7, 3)


def _toy_side(heads_only: bool = False) -> NetState:
    params = {"encoder": {"w": jnp.array([2.0])}, "head": {"w": jnp.array([4.0])}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    stats = {"encoder": {"m": jnp.array([1.0, 3.0])}}
    return NetState(
        step=jnp.zeros((), jnp.int32), apply_fn=None, params=params, tx=optax.sgd(1.0), opt_state=(),
        target_params={"head": zeros["head"]} if heads_only else zeros, batch_stats=stats,
        target_batch_stats={} if heads_only else {"encoder": {"m": jnp.zeros(2)}},
    )


def test_soft_update_moves_targets_and_batchnorm_stats():
    side = _toy_side()
    polyak = side.soft_update(0.5, "polyak")
    chex.assert_trees_all_close(polyak.target_params, {"encoder": {"w": jnp.array([1.0])}, "head": {"w": jnp.array([2.0])}})
    chex.assert_trees_all_close(polyak.target_batch_stats, {"encoder": {"m": jnp.array([0.5, 1.5])}})
    chex.assert_trees_all_equal(polyak.params, side.params)  # the online side is not touched
    copied = side.soft_update(0.5, "copy")
    chex.assert_trees_all_equal(copied.target_batch_stats, side.batch_stats)
    chex.assert_trees_all_close(copied.target_params, polyak.target_params)
    heads = _toy_side(heads_only=True).soft_update(0.5, "polyak")  # `original`: target heads only, no stats
    assert set(heads.target_params) == {"head"} and heads.target_batch_stats == {}
    chex.assert_trees_all_close(heads.target_params["head"]["w"], jnp.array([2.0]))
    with pytest.raises(ValueError, match="unknown target_bn_stats 'mean'"):
        side.soft_update(0.5, "mean")


def _toy_params():
    encoder = {"conv": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}}
    return {"encoder": encoder, "head": {"kernel": jnp.ones((2, 2))}}


def test_optimizer_learning_rates_clipping_and_weight_decay():
    params = _toy_params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e3), params)

    def first_step(cfg, g, side="critic"):
        opt = make_optimizer(cfg, side)
        updates, _ = opt.update(g, opt.init(params), params)
        return jax.tree.map(lambda u: float(jnp.max(jnp.abs(u))), updates)

    step = first_step(AgentConfig(cnn_lr=1e-4, mlp_lr=3e-4), grads)  # Adam's first step ~ lr * sign(g)
    assert step["encoder"]["conv"]["kernel"] == pytest.approx(1e-4, rel=1e-3)
    assert step["head"]["kernel"] == pytest.approx(3e-4, rel=1e-3)
    # per-side global-norm clipping to 1e-10 makes |g| ~ 3e-11 << Adam's eps (1e-8): that side's step shrinks
    # ~300x, the other side is untouched
    step = first_step(AgentConfig(cnn_grad_clip=1e-10), grads)
    assert step["encoder"]["conv"]["kernel"] < 1e-2 * 1e-4 and step["head"]["kernel"] == pytest.approx(3e-4, rel=1e-3)
    step = first_step(AgentConfig(mlp_grad_clip=1e-10), grads)
    assert step["head"]["kernel"] < 1e-2 * 3e-4 and step["encoder"]["conv"]["kernel"] == pytest.approx(1e-4, rel=1e-3)
    # AdamW with zero gradients: only kernels decay, by lr * weight_decay * param
    step = first_step(AgentConfig(weight_decay=0.1), jax.tree.map(jnp.zeros_like, params))
    assert step["encoder"]["conv"]["kernel"] == pytest.approx(1e-4 * 0.1, rel=1e-5)
    assert step["head"]["kernel"] == pytest.approx(3e-4 * 0.1, rel=1e-5)
    assert step["encoder"]["conv"]["bias"] == 0.0
    # coupled (PyTorch Adam(weight_decay)): wd * param joins the gradient of every parameter, biases too, and
    # Adam normalises it: the first step is ~lr wherever param != 0
    step = first_step(AgentConfig(weight_decay=0.1, weight_decay_mode="coupled"), jax.tree.map(jnp.zeros_like, params))
    assert step["encoder"]["conv"]["bias"] == pytest.approx(1e-4, rel=1e-3)
    assert step["head"]["kernel"] == pytest.approx(3e-4, rel=1e-3)
    # whole-side clipping (CNN and MLP together) applies to its side only, before the L2 term
    tiny = AgentConfig(actor_grad_clip=1e-10, critic_grad_clip=None)
    for side, shrunk in (("actor", True), ("critic", False)):
        step = first_step(tiny, grads, side)
        assert (step["encoder"]["conv"]["kernel"] < 1e-6) == shrunk and (step["head"]["kernel"] < 3e-6) == shrunk
    step = first_step(AgentConfig(critic_grad_clip=1e-10, weight_decay=1.0, weight_decay_mode="coupled"), grads)
    assert step["head"]["kernel"] == pytest.approx(3e-4, rel=1e-3)  # the decay term is added after clipping
    with pytest.raises(ValueError, match="unknown optimiser side 'policy'"):
        make_optimizer(AgentConfig(), "policy")


def test_every_config_field_is_read_and_per_layer_stats_are_reported():
    cfg = AgentConfig(
        norm="hybrid", activation="relu", features_dim=48, actor_hidden=(24,), critic_hidden=(24, 16),
        gamma=0.9, tau=0.01, policy_noise=0.1, noise_clip=0.3, policy_delay=3, cnn_lr=2e-4, mlp_lr=5e-4,
        cnn_grad_clip=10.0, mlp_grad_clip=5.0, weight_decay=1e-5, bn_momentum=0.9, target_bn_stats="copy",
        conv_impl="im2col", conv_chunk=3, per_layer_stats=True, encoder="separate", actor_out_init=1e-2,
        actor_grad_clip=1.0, critic_grad_clip=10.0, weight_decay_mode="coupled", trunk_dim=12, n_step=1,
        compute_dtype="bfloat16",
    )  # fmt: skip
    batch = make_batch(0)
    with track_reads() as reads:
        state = agent.create(cfg, OBS_SPACE, ACT_SPACE, seed=0)
        _, metrics = jax.eval_shape(agent.update, state, batch)  # traces the whole update without compiling
        jax.eval_shape(agent.act, state, batch["obs"], jax.random.key(0), 0.1)
    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    unread = fields - {name for cls, name in reads if cls == "AgentConfig"}
    assert not unread, f"AgentConfig fields never read by create/update/act: {sorted(unread)}"
    for who in ("critic", "actor"):
        for layer in ("conv1", "conv2", "conv3"):
            assert {f"debug/{who}_{layer}_{s}" for s in FEATURE_STATS} <= set(metrics)


def test_bfloat16_encoder_update_stays_close_to_float32():
    """agent.compute_dtype bfloat16 changes only the encoders' matmul operands: from the same parameters, one
    update gives float32 state and metrics within bfloat16 rounding of the float32 update."""
    small = dict(features_dim=48, actor_hidden=(24,), critic_hidden=(24,), trunk_dim=0, policy_delay=1)
    batch = make_batch(0)
    out = {}
    for dtype in ("float32", "bfloat16"):
        state = agent.create(AgentConfig(compute_dtype=dtype, **small), OBS_SPACE, ACT_SPACE, seed=0)
        out[dtype] = agent.update(state, batch)
    (s32, m32), (s16, m16) = out["float32"], out["bfloat16"]
    chex.assert_trees_all_equal_dtypes(s16.critic.params, s32.critic.params)
    chex.assert_tree_all_finite((s16.critic.params, s16.actor.params, m16))
    for key in ("losses/critic_loss", "losses/q1_mean", "debug/critic_cnn_features_l2_norm"):
        assert float(m16[key]) == pytest.approx(float(m32[key]), rel=5e-2, abs=1e-3), key
    assert float(m16["debug/critic_cnn_features_l2_norm"]) != float(m32["debug/critic_cnn_features_l2_norm"])


def test_bool_terminated_is_accepted():
    r = run("layernorm", "separate")
    batch = {**r["batch"], "terminated": r["batch"]["terminated"] > 0.5}
    _, metrics = jax.eval_shape(agent.update, r["s0"], batch)
    assert metrics["losses/critic_loss"].dtype == jnp.float32


def test_bad_config_values_name_the_valid_choices():
    with pytest.raises(ConfigError, match=r"'norm' = 'groupnorm'.*'none', 'layernorm', 'batchnorm', 'hybrid'"):
        from_dict(AgentConfig, {"norm": "groupnorm"})
    with pytest.raises(ConfigError, match=r"'encoder' = 'both'.*'separate', 'shared', 'original'"):
        from_dict(AgentConfig, {"encoder": "both"})
    with pytest.raises(ConfigError, match=r"'activation' = 'tanh'.*'leaky_relu', 'relu'"):
        from_dict(AgentConfig, {"activation": "tanh"})
    for bad in ({"norm": "bn"}, {"encoder": "x"}, {"activation": "gelu"}):  # direct construction too
        with pytest.raises(ValueError, match="must be one of"):
            AgentConfig(**bad)
    with pytest.raises(ValueError, match=r"agent.tau.*\(0, 1\]"):
        AgentConfig(tau=0.0)
    with pytest.raises(ValueError, match=r"agent.cnn_grad_clip"):
        AgentConfig(cnn_grad_clip=-1.0)
    with pytest.raises(ValueError, match=r"agent.actor_grad_clip"):
        AgentConfig(actor_grad_clip=0.0)
    with pytest.raises(ConfigError, match=r"'weight_decay_mode' = 'l2'.*'decoupled', 'coupled'"):
        from_dict(AgentConfig, {"weight_decay_mode": "l2"})


def test_bad_observations_and_spaces_name_the_expected_shape():
    r = run("layernorm", "separate")
    state, obs = r["s0"], r["batch"]["obs"]
    small = {**obs, "camera": obs["camera"][:, :, :64, :64]}
    with pytest.raises(ValueError, match=r"must be uint8 of shape \(B, 4, 84, 84\), got uint8 \(4, 4, 64, 64\)"):
        agent.act(state, small, jax.random.key(0), 0.0)
    with pytest.raises(ValueError, match=r"uint8 of shape \(B, 4, 84, 84\), got float32"):
        agent.act(state, {**obs, "camera": obs["camera"].astype(jnp.float32)}, jax.random.key(0), 0.0)
    with pytest.raises(ValueError, match=r"kinematics'\] must have shape \(4, 5\), got \(4, 6\)"):
        agent.act(state, {**obs, "kinematics": jnp.zeros((B, KIN + 1))}, jax.random.key(0), 0.0)
    batch = r["batch"]
    with pytest.raises(ValueError, match=r"batch\['action'\] must have shape \(4, 2\)"):
        jax.eval_shape(agent.update, state, {**batch, "action": batch["action"][:, :1]})
    with pytest.raises(ValueError, match="batch must be a dict with keys"):
        jax.eval_shape(agent.update, state, {k: v for k, v in batch.items() if k != "terminated"})
    with pytest.raises(ValueError, match=r"\['camera'\] must be a uint8 Box of shape \(frames, H, W\)"):
        bad = spaces.Dict({"camera": spaces.Box(0, 1, (4, 84, 84), np.float32), "kinematics": OBS_SPACE["kinematics"]})
        agent.create(AgentConfig(), bad, ACT_SPACE, 0)
    with pytest.raises(ValueError, match=r"bounded by \[-1, 1\]"):
        agent.create(AgentConfig(), OBS_SPACE, spaces.Box(-2.0, 2.0, (2,)), 0)


def test_metrics_are_plain_float32_scalars_for_logging():
    m = run("layernorm", "shared")["m2"]
    assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())
