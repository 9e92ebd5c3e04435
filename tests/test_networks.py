"""NatureCNN (every norm), actor and twin-critic heads: shapes, init, normalization behaviour, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtd3.agent.diagnostics import per_sample_l2
from jtd3.agent.networks import NORMS, ActorHead, NatureCNN, TwinCriticHead

B = 3


@pytest.fixture(scope="module")
def camera():
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (B, 4, 84, 84), dtype=np.uint8))


@pytest.mark.parametrize("norm", NORMS)
def test_nature_cnn_shapes_params_and_finiteness(norm, camera):
    net = NatureCNN(norm=norm)
    variables = net.init(jax.random.key(0), camera, train=False)
    params = variables["params"]
    chex.assert_shape(params["conv1"]["kernel"], (8, 8, 4, 32))
    chex.assert_shape(params["dense"]["kernel"], (3136, 512))  # 84 -> 20 -> 9 -> 7 (VALID), 7*7*64
    if norm == "layernorm":  # like the seed's nn.LayerNorm([C, H, W]): elementwise scale/bias over (H, W, C)
        chex.assert_shape(params["conv1_ln"]["scale"], (20, 20, 32))
        chex.assert_shape(params["conv3_ln"]["bias"], (7, 7, 64))
    if norm in ("batchnorm", "hybrid"):
        chex.assert_shape(variables["batch_stats"]["conv2_bn"]["mean"], (64,))
    assert ("dense_ln" in params) == (norm in ("layernorm", "hybrid"))
    assert ("batch_stats" in variables) == (norm in ("batchnorm", "hybrid"))
    out, updates = net.apply(variables, camera, train=True, mutable=["batch_stats", "intermediates"])
    chex.assert_shape(out, (B, 512))
    layers = updates["intermediates"]
    chex.assert_shape([layers["conv1_out"][0], layers["conv2_out"][0], layers["conv3_out"][0]],
                      [(B, 20, 20, 32), (B, 9, 9, 64), (B, 7, 7, 64)])
    chex.assert_tree_all_finite((out, updates))


def test_he_initialization_and_zero_biases(camera):
    params = NatureCNN(norm="none").init(jax.random.key(1), camera, train=False)["params"]
    for name, fan_in in (("conv1", 8 * 8 * 4), ("conv2", 4 * 4 * 32), ("conv3", 3 * 3 * 64), ("dense", 3136)):
        std = float(jnp.std(params[name]["kernel"]))
        assert std == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.1), (name, std)
        assert not jnp.any(params[name]["bias"])


def test_im2col_and_xla_convolutions_give_the_same_network(camera):
    a, b = NatureCNN(norm="layernorm", conv_impl="im2col"), NatureCNN(norm="layernorm", conv_impl="xla")
    va = a.init(jax.random.key(2), camera, train=False)
    vb = b.init(jax.random.key(2), camera, train=False)
    chex.assert_trees_all_equal(va, vb)  # parameters do not depend on the implementation
    np.testing.assert_allclose(a.apply(va, camera, train=False), b.apply(va, camera, train=False), atol=1e-5)


@pytest.mark.parametrize("conv_impl", ["im2col", "xla"])
def test_bfloat16_products_keep_parameters_and_features_float32(camera, conv_impl):
    """compute_dtype bfloat16: the same float32 parameter tree (checkpoints do not depend on it), float32
    features within bfloat16 rounding of the float32 network's, and float32 gradients."""
    a = NatureCNN(norm="layernorm", conv_impl=conv_impl)
    b = NatureCNN(norm="layernorm", conv_impl=conv_impl, compute_dtype="bfloat16")
    va = a.init(jax.random.key(2), camera, train=False)
    chex.assert_trees_all_equal(va, b.init(jax.random.key(2), camera, train=False))
    fa, fb = a.apply(va, camera, train=False), b.apply(va, camera, train=False)
    assert fb.dtype == jnp.float32
    rel = float(jnp.linalg.norm(fb - fa) / jnp.linalg.norm(fa))
    assert 0.0 < rel < 3e-2, rel
    grads = jax.grad(lambda v: jnp.sum(b.apply(v, camera, train=False) ** 2))(va)
    chex.assert_trees_all_equal_dtypes(grads, va)
    chex.assert_tree_all_finite(grads)


def _scaled_conv_l2(norm: str, camera, scale: float) -> float:
    net = NatureCNN(norm=norm)
    variables = net.init(jax.random.key(3), camera, train=False)
    params = {k: ({**v, "kernel": v["kernel"] * scale} if k.startswith("conv") and not k.endswith(("_ln", "_bn"))
                  else v) for k, v in variables["params"].items()}
    feats = net.apply({**variables, "params": params}, camera, train=False)
    return float(jnp.mean(per_sample_l2(feats)))


def test_layernorm_bounds_features_under_conv_weight_drift_while_none_explodes(camera):
    """The seed's claim: LayerNorm keeps the per-sample feature L2 bounded when conv weights drift 10x/100x."""
    bound = 2 * np.sqrt(512)
    ln = {s: _scaled_conv_l2("layernorm", camera, s) for s in (1.0, 10.0, 100.0)}
    none = {s: _scaled_conv_l2("none", camera, s) for s in (1.0, 10.0, 100.0)}
    report = f"per-sample feature L2 by conv-weight scale: layernorm {ln}, none {none}, bound {bound:.1f}"
    assert all(v <= bound for v in ln.values()), report
    assert max(ln.values()) / min(ln.values()) < 1.5, report
    assert none[10.0] / none[1.0] > 100.0, report  # positively homogeneous: ~10^3 through three convs
    assert none[100.0] / none[1.0] > 1e5, report  # ~10^6


def test_batchnorm_eval_mode_is_per_sample_and_train_mode_updates_stats(camera):
    net = NatureCNN(norm="batchnorm")
    variables = net.init(jax.random.key(4), camera, train=False)
    stats = variables["batch_stats"]
    for _ in range(3):  # move the running averages away from their init
        _, upd = net.apply({**variables, "batch_stats": stats}, camera, train=True, mutable=["batch_stats"])
        assert not np.allclose(upd["batch_stats"]["conv1_bn"]["mean"], stats["conv1_bn"]["mean"])
        stats = upd["batch_stats"]
    frozen = {**variables, "batch_stats": stats}
    perm = jnp.array([2, 0, 1])
    eval_out = net.apply(frozen, camera, train=False)
    np.testing.assert_allclose(net.apply(frozen, camera[perm], train=False), eval_out[perm], rtol=1e-5, atol=1e-6)
    other = camera.at[1:].set(255 - camera[1:])  # same sample 0, different companions
    np.testing.assert_allclose(net.apply(frozen, other, train=False)[0], eval_out[0], rtol=1e-5, atol=1e-6)
    train_out, _ = net.apply(frozen, other, train=True, mutable=["batch_stats"])
    train_ref, _ = net.apply(frozen, camera, train=True, mutable=["batch_stats"])
    assert not np.allclose(train_out[0], train_ref[0], atol=1e-3)  # batch statistics do couple the samples


def test_heads_shapes_bounds_and_independent_twins():
    feats = jnp.asarray(np.random.default_rng(5).standard_normal((B, 16)), jnp.float32)
    kin = jnp.ones((B, 5))
    actor = ActorHead(action_dim=2, hidden=(8, 8))
    a = actor.apply(actor.init(jax.random.key(0), feats, kin), feats * 100.0, kin)
    chex.assert_shape(a, (B, 2))
    assert bool(jnp.all(jnp.abs(a) <= 1.0))
    critic = TwinCriticHead(hidden=(8, 8))
    cv = critic.init(jax.random.key(0), feats, kin, a)
    chex.assert_shape(cv["params"]["q"]["mlp"]["fc0"]["kernel"], (2, 16 + 5 + 2, 8))
    q = critic.apply(cv, feats, kin, a)
    chex.assert_shape(q, (2, B))
    assert not np.allclose(q[0], q[1])  # two independently initialised heads


def test_bad_choices_and_inputs_are_named(camera):
    with pytest.raises(ValueError, match=r"unknown norm 'groupnorm'; valid choices: 'none', 'layernorm', 'batchnorm'"):
        NatureCNN(norm="groupnorm").init(jax.random.key(0), camera, train=False)
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'; valid choices: 'leaky_relu', 'relu'"):
        NatureCNN(activation="gelu").init(jax.random.key(0), camera, train=False)
    with pytest.raises(ValueError, match=r"uint8"):
        NatureCNN().init(jax.random.key(0), camera.astype(jnp.float32), train=False)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        NatureCNN().init(jax.random.key(0), camera[0], train=False)


def test_fresh_actor_is_not_saturated():
    """He init on the actor's output layer started the tanh saturated (brake -0.9, steer 0.8): the output layer
    starts small so the first policy is near zero and its gradient is not crushed by tanh."""
    head = ActorHead(action_dim=2)
    feats = jax.random.normal(jax.random.PRNGKey(1), (64, 512)) * 2.0
    kin = jax.random.uniform(jax.random.PRNGKey(2), (64, 55), minval=-1.0, maxval=1.0)
    params = head.init(jax.random.PRNGKey(0), feats, kin)
    actions = head.apply(params, feats, kin)
    assert float(jnp.max(jnp.abs(actions))) < 0.2, actions
    kernel = params["params"]["mlp"]["out"]["kernel"]
    assert float(jnp.max(jnp.abs(kernel))) <= 3e-3


def test_critic_layernorm_bounds_extrapolation_to_far_actions():
    """RLPD's LayerNorm in the Q heads: a normalised hidden layer keeps Q bounded however far the action input
    goes, where the plain ReLU MLP grows linearly with it (what drove the actor to the action bounds)."""
    feats, kin = jnp.ones((4, 16)), jnp.ones((4, 5))
    plain, normed = TwinCriticHead(hidden=(32, 32)), TwinCriticHead(hidden=(32, 32), layer_norm=True)
    a = jnp.zeros((4, 2))
    p_plain = plain.init(jax.random.PRNGKey(0), feats, kin, a)
    p_norm = normed.init(jax.random.PRNGKey(0), feats, kin, a)
    names = str(jax.tree_util.tree_structure(p_norm))
    assert "ln0" in names and "ln1" in names and "ln0" not in str(jax.tree_util.tree_structure(p_plain))

    def spread(net, params):
        qs = [net.apply(params, feats, kin, jnp.full((4, 2), scale)) for scale in (1.0, 1e3, 1e6)]
        return float(jnp.max(jnp.abs(qs[-1]))), float(jnp.max(jnp.abs(qs[0])))

    far_plain, near_plain = spread(plain, p_plain)
    far_norm, near_norm = spread(normed, p_norm)
    assert far_plain > 1e4 * max(near_plain, 1e-3)  # linear growth
    assert far_norm < 100.0 * max(near_norm, 1.0)  # bounded: LayerNorm output has unit scale per unit


def test_trunk_squeezes_features_before_the_action_joins_them():
    """agent.trunk_dim (DrQ-v2's trunk): each head maps the features to trunk_dim bounded values first, so the
    Q head's first layer sees trunk_dim + kinematics + action inputs (not 512 + ...), and the features' scale
    cannot swamp the action's."""
    rng = np.random.default_rng(3)
    feats = jnp.asarray(rng.standard_normal((B, 64)), jnp.float32)
    kin, a = jnp.ones((B, 5)), jnp.asarray(rng.uniform(-1, 1, (B, 2)), jnp.float32)
    critic = TwinCriticHead(hidden=(16, 16), layer_norm=True, trunk_dim=8)
    cv = critic.init(jax.random.key(0), feats, kin, a)
    q_params = cv["params"]["q"]
    chex.assert_shape(q_params["trunk"]["fc"]["kernel"], (2, 64, 8))  # one trunk per Q head (vmapped)
    chex.assert_shape(q_params["mlp"]["fc0"]["kernel"], (2, 8 + 5 + 2, 16))
    # bounded trunk: features a thousand times larger move Q by a bounded amount, where without a trunk the
    # first layer's input is dominated by them
    q, q_big = critic.apply(cv, feats, kin, a), critic.apply(cv, feats * 1e3, kin, a)
    assert bool(jnp.all(jnp.isfinite(q_big))) and float(jnp.max(jnp.abs(q_big - q))) < 10.0
    actor = ActorHead(action_dim=2, hidden=(16, 16), trunk_dim=8)
    av = actor.init(jax.random.key(1), feats, kin)
    chex.assert_shape(av["params"]["mlp"]["fc0"]["kernel"], (8 + 5, 16))
    chex.assert_shape(actor.apply(av, feats, kin), (B, 2))
