"""``conv_impl: onednn``: the C++ kernel computes what ``lax.conv`` computes, in every place the update uses it.

The kernel needs g++ and oneDNN (``apt-get install g++ libdnnl-dev``). Without them these tests are skipped,
except under CI (``$CI`` set), where a missing oneDNN is a failure: the README's test command installs it.
"""

import os
import stat
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces
from jax import lax

from jtd3 import agent
from jtd3.agent import AgentConfig, onednn
from jtd3.agent.conv import conv2d
from jtd3.agent.layout import scale_camera, space_to_depth
from jtd3.agent.networks import NatureCNN
from jtd3.agent.state import resolve_conv_impl

DN = ("NHWC", "HWIO", "NHWC")
# (H, C_in, kernel, stride, C_out): the NatureCNN layers and an odd case (stride 2 with a 3x3 kernel, which
# im2col cannot take, and an input size the stride does not divide).
LAYERS = [(84, 4, 8, 4, 32), (20, 32, 4, 2, 64), (9, 64, 3, 1, 64), (11, 5, 3, 2, 7)]


_MISSING = onednn.unavailable_reason()
if _MISSING and not os.environ.get("CI"):
    pytest.skip(f"oneDNN kernel unavailable here: {_MISSING.splitlines()[0]}", allow_module_level=True)


def _reference(x, w, stride):
    return lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=DN, precision="highest")


def _inputs(h, cin, k, cout, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, h, h, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    return x, w


def _forward_and_grads(fn, x, w, cot):
    y = jax.jit(fn)(x, w)
    return y, jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w) * cot), argnums=(0, 1)))(x, w)


def _assert_bfloat16_close(got, ref):
    """A float32 result of bfloat16 products: within bfloat16 rounding of the float32 reference, and not equal to
    it (> 0: the products really ran in bfloat16)."""
    assert got.dtype == jnp.float32
    rel = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
    assert 0.0 < rel < 2e-2, rel


def _assert_trees_close(got, ref):
    """Leaf by leaf, to float32 summation order: relative 1e-3, absolute 1e-4 of the leaf's largest value."""
    chex.assert_trees_all_equal_shapes(got, ref)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(r))) + 1e-12)


def test_kernel_builds_here():
    assert _MISSING is None, _MISSING


@pytest.mark.parametrize("h,cin,k,stride,cout", LAYERS)
def test_float32_forward_and_gradients_match_lax_conv(h, cin, k, stride, cout):
    x, w = _inputs(h, cin, k, cout, 3)
    ho = (h - k) // stride + 1
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((3, ho, ho, cout)), jnp.float32)
    y, (dx, dw) = _forward_and_grads(lambda x, w: conv2d(x, w, stride, impl="onednn"), x, w, cot)
    y_ref, (dx_ref, dw_ref) = _forward_and_grads(lambda x, w: _reference(x, w, stride), x, w, cot)
    chex.assert_shape(y, (3, ho, ho, cout))
    chex.assert_type([y, dx, dw], jnp.float32)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=2e-5 * float(jnp.max(jnp.abs(dw_ref))))


def test_bias_is_added_inside_and_its_gradient_summed_inside():
    """conv2d_onednn's bias: forward and the bias gradient (from the weight-gradient primitive) = lax.conv + b."""
    h, cin, k, stride, cout = LAYERS[1]
    x, w = _inputs(h, cin, k, cout, 3)
    rng = np.random.default_rng(2)
    bias = jnp.asarray(rng.standard_normal(cout), jnp.float32)
    ho = (h - k) // stride + 1
    cot = jnp.asarray(rng.standard_normal((3, ho, ho, cout)), jnp.float32)

    def run(fn):
        return jax.jit(fn)(x, w, bias), jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cot), argnums=(0, 1, 2)))(x, w, bias)

    got = run(lambda x, w, b: onednn.conv2d_onednn(x, w, b, stride))
    want = run(lambda x, w, b: _reference(x, w, stride) + b)
    _assert_trees_close(got, want)


@pytest.mark.parametrize("h,cin,k,stride,cout", LAYERS[:3])
def test_bfloat16_stays_within_bfloat16_rounding_and_returns_float32(h, cin, k, stride, cout):
    x, w = _inputs(h, cin, k, cout, 3)
    ho = (h - k) // stride + 1
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((3, ho, ho, cout)), jnp.float32)
    y, (dx, dw) = _forward_and_grads(lambda x, w: conv2d(x, w, stride, "onednn", compute_dtype="bfloat16"), x, w, cot)
    y32, (dx32, dw32) = _forward_and_grads(lambda x, w: _reference(x, w, stride), x, w, cot)
    for got, ref in ((y, y32), (dx, dx32)):
        _assert_bfloat16_close(got, ref)
    # The weight gradient multiplies float32 operands (faster than oneDNN 2.6's bfloat16 kernels here).
    assert dw.dtype == jnp.float32
    np.testing.assert_allclose(dw, dw32, rtol=1e-5, atol=2e-5 * float(jnp.max(jnp.abs(dw32))))


# (batch, in, out): the encoder's dense layer and an odd shape
DENSE = [(6, 3136, 512), (3, 37, 5)]


def _dense_inputs(b, k, n, seed):
    """x (b, k), a He-scaled kernel (k, n) and a cotangent (b, n)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((b, k)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, n)) / np.sqrt(k), jnp.float32)
    return x, w, jnp.asarray(rng.standard_normal((b, n)), jnp.float32)


@pytest.mark.parametrize("b,k,n", DENSE)
def test_dense_matches_jnp_dot_forward_and_gradients(b, k, n):
    x, w, cot = _dense_inputs(b, k, n, seed=5)
    y, (dx, dw) = _forward_and_grads(lambda x, w: onednn.dense_onednn(x, w), x, w, cot)
    y_ref, (dx_ref, dw_ref) = _forward_and_grads(lambda x, w: jnp.dot(x, w, precision="highest"), x, w, cot)
    chex.assert_type([y, dx, dw], jnp.float32)
    _assert_trees_close((y, dx, dw), (y_ref, dx_ref, dw_ref))


def test_dense_in_bfloat16_stays_within_bfloat16_rounding_and_returns_float32():
    x, w, cot = _dense_inputs(*DENSE[0], seed=6)
    got = _forward_and_grads(lambda x, w: onednn.dense_onednn(x, w, "bfloat16"), x, w, cot)
    want = _forward_and_grads(lambda x, w: jnp.dot(x, w, precision="highest"), x, w, cot)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _assert_bfloat16_close(g, r)


def test_bfloat16_input_gets_a_bfloat16_gradient():
    x, w = _inputs(9, 8, 3, 4, 2)
    dx = jax.grad(lambda x: jnp.sum(conv2d(x, w, 1, "onednn", compute_dtype="bfloat16")))(x.astype(jnp.bfloat16))
    assert dx.dtype == jnp.bfloat16


def test_operands_of_the_other_dtype_are_converted_by_the_kernel():
    """A bfloat16 operand under compute_dtype float32 is widened by the kernel (exactly: the same result as
    widening it first), a float32 one under bfloat16 narrowed (the same result as narrowing it first), and a
    float16 operand is refused with a message naming the dtypes the kernels take."""
    x, w = _inputs(9, 8, 3, 4, 2)
    bias = jnp.zeros(w.shape[-1])
    x_lo = x.astype(jnp.bfloat16)
    conv = jax.jit(onednn.conv2d_onednn, static_argnums=(3, 4))
    widened = conv(x_lo.astype(jnp.float32), w, bias, 1, "float32")
    np.testing.assert_array_equal(conv(x_lo, w, bias, 1, "float32"), widened)
    narrowed = conv(x_lo, w.astype(jnp.bfloat16), bias, 1, "bfloat16")
    np.testing.assert_array_equal(conv(x, w, bias, 1, "bfloat16"), narrowed)
    with pytest.raises(jax.errors.JaxRuntimeError, match="float32 or bfloat16"):
        jax.block_until_ready(conv(x.astype(jnp.float16), w, bias, 1, "float32"))


def test_gradients_inside_scan_and_cond_match():
    """Nested in lax.scan and lax.cond, as in ``update_many`` (the actor step is a cond branch)."""
    x, w = _inputs(9, 8, 3, 4, 3)

    def make_body(conv):
        def body(w, xs):
            def step(w):
                return jax.grad(lambda w: jnp.sum(jnp.tanh(conv(xs, w))))(w)

            g = lax.cond(jnp.sum(xs) > -1e9, step, jnp.zeros_like, w)
            return w - 0.1 * g, jnp.sum(g)

        return body

    stacked = jnp.stack([x, 2 * x])
    w1, s1 = jax.jit(lambda w: lax.scan(make_body(lambda x, w: conv2d(x, w, 1, "onednn")), w, stacked))(w)
    w2, s2 = jax.jit(lambda w: lax.scan(make_body(lambda x, w: _reference(x, w, 1)), w, stacked))(w)
    np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s1, s2, rtol=1e-4)


def test_vmap_runs_each_sample_through_the_kernel():
    x, w = _inputs(9, 8, 3, 4, 2)
    ws = jnp.stack([w, -w])
    got = jax.vmap(lambda w: conv2d(x, w, 1, "onednn"))(ws)
    np.testing.assert_allclose(got, jnp.stack([_reference(x, w, 1), _reference(x, -w, 1)]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_nature_cnn_is_the_same_network_as_with_im2col(norm):
    """Same parameters, same features and parameter gradients (float32) as the default implementation."""
    camera = jnp.asarray(np.random.default_rng(3).integers(0, 256, (4, 4, 84, 84), dtype=np.uint8))
    a, b = NatureCNN(norm=norm, conv_impl="im2col"), NatureCNN(norm=norm, conv_impl="onednn")
    params = a.init(jax.random.key(0), camera, train=False)["params"]
    chex.assert_trees_all_equal_shapes(params, b.init(jax.random.key(0), camera, train=False)["params"])

    def grads(net):
        return jax.grad(lambda p: jnp.sum(net.apply({"params": p}, camera, train=True) ** 2))(params)

    np.testing.assert_allclose(
        b.apply({"params": params}, camera, train=False), a.apply({"params": params}, camera, train=False),
        rtol=1e-4, atol=1e-5,
    )
    _assert_trees_close(grads(b), grads(a))


def test_missing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(onednn.OneDNNUnavailable, match=r"no-such-g\+\+.*not found.*libdnnl-dev"):
        onednn._build()


def test_failed_compilation_says_why_and_leaves_no_library(monkeypatch, tmp_path):
    fake = tmp_path / "fake-g++"
    fake.write_text("#!/bin/sh\necho 'fatal error: dnnl.hpp: No such file or directory' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(fake))
    message = r"(?s)compiling onednn_conv.cc, layer_norm_act.cc, camera.cc failed.*libdnnl-dev.*dnnl.hpp"
    with pytest.raises(onednn.OneDNNUnavailable, match=message):
        onednn._build()
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_onednn_is_cpu_only_and_not_what_auto_picks():
    assert resolve_conv_impl("onednn", "cpu") == "onednn"
    assert resolve_conv_impl("auto", "cpu") == "im2col"  # until a learning benchmark justifies it (docs/agent.md)
    with pytest.raises(ValueError, match=r"'onednn' runs on the CPU only.*'gpu'"):
        resolve_conv_impl("onednn", "gpu")


def test_agent_update_matches_the_im2col_update():
    """Two TD3 updates (separate encoders, LayerNorm) from the same parameters: the same losses and new
    parameters as with the im2col convolutions, to float32 summation order."""
    obs_space = spaces.Dict({
        "camera": spaces.Box(0, 255, (4, 84, 84), np.uint8),
        "kinematics": spaces.Box(-np.inf, np.inf, (3,), np.float32),
    })
    act_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    rng = np.random.default_rng(0)

    def obs():
        return {"camera": rng.integers(0, 256, (4, 4, 84, 84), dtype=np.uint8),
                "kinematics": rng.standard_normal((4, 3)).astype(np.float32)}

    batch = {"obs": obs(), "next_obs": obs(), "action": rng.uniform(-1, 1, (4, 2)).astype(np.float32),
             "reward": rng.standard_normal(4).astype(np.float32), "terminated": np.zeros(4, np.float32)}
    small = dict(encoder="separate", norm="layernorm", features_dim=48, actor_hidden=(24,), critic_hidden=(24,),
                 trunk_dim=0, policy_delay=1)
    out = {}
    for impl in ("im2col", "onednn"):
        state = agent.create(AgentConfig(conv_impl=impl, **small), obs_space, act_space, seed=0)
        assert state.spec.conv_impl == impl
        state, _ = agent.update(state, batch)  # step 0: the critic only
        out[impl] = agent.update(state, batch)  # step 1: critic, actor and targets
    (s_ref, m_ref), (s, m) = out["im2col"], out["onednn"]
    for key in ("losses/critic_loss", "losses/actor_loss", "grad_norm/critic_cnn", "grad_norm/actor_cnn"):
        np.testing.assert_allclose(m[key], m_ref[key], rtol=1e-4, err_msg=key)
    _assert_trees_close(s.critic.params, s_ref.critic.params)
    _assert_trees_close(s.actor.params, s_ref.actor.params)


def test_update_many_is_reproducible_bit_for_bit():
    """The same state and batches give bit-identical parameters on every call. XLA runs independent
    convolutions at once on different threads (an input gradient beside its weight gradient); with oneDNN's
    shared library scratchpad they overwrote each other's temporaries: every repeat differed and training hit
    NaN within 100 updates. Each call now brings its own scratchpad."""
    obs_space = spaces.Dict({
        "camera": spaces.Box(0, 255, (4, 84, 84), np.uint8),
        "kinematics": spaces.Box(-np.inf, np.inf, (3,), np.float32),
    })
    act_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    rng = np.random.default_rng(0)
    k, b = 4, 8

    def obs():
        return {"camera": rng.integers(0, 256, (k, b, 4, 84, 84), dtype=np.uint8),
                "kinematics": rng.standard_normal((k, b, 3)).astype(np.float32)}

    batches = {"obs": obs(), "next_obs": obs(), "action": rng.uniform(-1, 1, (k, b, 2)).astype(np.float32),
               "reward": rng.standard_normal((k, b)).astype(np.float32), "terminated": np.zeros((k, b), np.float32)}
    config = AgentConfig(conv_impl="onednn", encoder="separate", norm="layernorm", policy_delay=1)
    state = agent.create(config, obs_space, act_space, seed=0)
    update_many = jax.jit(agent.update_many)
    first = jax.tree.leaves(update_many(state, batches)[0].critic.params)
    for _ in range(5):
        again = jax.tree.leaves(update_many(state, batches)[0].critic.params)
        assert all(np.array_equal(a, b) for a, b in zip(again, first))


def test_unwritable_cache_is_named(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache directory would go
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(onednn.OneDNNUnavailable, match=r"cannot write the kernel's cache.*XDG_CACHE_HOME"):
        onednn._build()


def test_a_new_build_deletes_only_builds_unused_for_30_days(monkeypatch, tmp_path):
    fake = tmp_path / "fake-g++"  # "compiles" by writing its -o file
    fake.write_text('#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done\necho built > "$2"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(fake))
    cache = tmp_path / "cache" / "jtd3" / "native"
    cache.mkdir(parents=True)
    stale, recent, other = cache / "onednn_conv-0.so", cache / "onednn_conv-1.so", cache / "notes.so"
    for f in (stale, recent, other):
        f.write_text("")
    month_ago = time.time() - 31 * 86400
    for f in (stale, other):
        os.utime(f, (month_ago, month_ago))
    built = onednn._build()
    assert built.read_text() == "built\n" and not stale.exists() and recent.exists() and other.exists()
    os.utime(built, (month_ago, month_ago))
    assert onednn._build() == built and built.stat().st_mtime > month_ago  # a use renews it


@pytest.mark.parametrize("activation", ["leaky_relu", "relu"])
def test_layer_norm_act_matches_flax_forward_and_gradients(activation):
    """The conv layers' LayerNorm (over H, W, C with per-element scale and bias) and activation in one kernel =
    Flax's LayerNorm followed by JAX's activation, values and the gradients of x, scale and bias."""
    import flax.linen as nn

    from jtd3.agent.networks import activation_fn, activation_slope

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((5, 20, 20, 32)) * 3 + 1, jnp.float32)
    x = x.at[1].set(7.0)  # a constant sample: variance 0, z exactly the bias, where the activation's kink is
    flax_ln = nn.LayerNorm(epsilon=1e-5, reduction_axes=(-3, -2, -1), feature_axes=(-3, -2, -1))
    params = flax_ln.init(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda a: a + jnp.asarray(rng.standard_normal(a.shape) * 0.1, jnp.float32), params)
    params["bias"] = params["bias"].at[0, 0].set(0.0)  # z == 0 exactly in the constant sample
    cot = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    slope = activation_slope(activation)
    act = activation_fn(activation)

    def ours(p, x):
        return onednn.layer_norm_act(x, p["scale"], p["bias"], 1e-5, slope)

    def ref(p, x):
        return act(flax_ln.apply({"params": p}, x))

    np.testing.assert_allclose(jax.jit(ours)(params, x), ref(params, x), rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(lambda p, x: jnp.sum(ours(p, x) * cot), argnums=(0, 1)))(params, x)
    want = jax.grad(lambda p, x: jnp.sum(ref(p, x) * cot), argnums=(0, 1))(params, x)
    _assert_trees_close(got, want)  # bias[0, 0]'s gradient holds the constant sample's kink: g or 0 per activation


def test_layer_norm_act_refuses_parameters_of_another_size():
    x = jnp.zeros((2, 3, 4), jnp.float32)
    with pytest.raises(jax.errors.JaxRuntimeError, match="scale and shift must have x's feature size"):
        jax.block_until_ready(onednn.layer_norm_act(x, jnp.ones((3, 4)), jnp.zeros((3, 5)), 1e-5, 0.01))


def test_nature_cnn_with_onednn_uses_its_layer_norm_with_flax_parameters():
    camera = jnp.zeros((2, 4, 84, 84), jnp.uint8)
    net = NatureCNN(norm="layernorm", conv_impl="onednn")
    params = net.init(jax.random.key(0), camera, train=False)["params"]
    jaxpr = str(jax.make_jaxpr(lambda p: net.apply({"params": p}, camera, train=False))(params))
    assert jaxpr.count("jtd3_ln_act_fwd") == 3  # conv1-3; the dense layer's LayerNorm stays Flax's
    assert jaxpr.count("jtd3_onednn_matmul") == 1  # the dense layer's product
    assert params["conv1_ln"]["scale"].shape == (20, 20, 32) and set(params["conv1_ln"]) == {"scale", "bias"}


# (C, H, W, block, Ho, Wo): the NatureCNN camera in both layouts, a camera cropped to what a VALID convolution
# reads, and a C / block that the 4-channel shuffles do not take (one byte at a time).
CAMERAS = [(4, 84, 84, 1, 84, 84), (4, 84, 84, 4, 21, 21), (4, 83, 81, 4, 20, 20), (3, 10, 9, 2, 4, 4)]


@pytest.mark.parametrize("c,h,w,block,ho,wo", CAMERAS)
def test_camera_input_is_xlas_scaled_camera_laid_out(c, h, w, block, ho, wo):
    """Every uint8 value, in both dtypes: exactly XLA's scale_camera, transposed to channels-last and (block > 1)
    rearranged to space-to-depth with the channel order conv.space_to_depth uses; bfloat16 rounded as XLA's."""
    values = np.resize(np.arange(256, dtype=np.uint8), 2 * c * h * w)  # every uint8 value, shuffled
    camera = jnp.asarray(np.random.default_rng(0).permutation(values).reshape(2, c, h, w))
    x = jnp.transpose(scale_camera(camera), (0, 2, 3, 1))[:, : ho * block, : wo * block]
    ref = space_to_depth(x, block) if block > 1 else x
    np.testing.assert_array_equal(onednn.camera_input(camera, block, (ho, wo)), ref)
    got = onednn.camera_input(camera, block, (ho, wo), "bfloat16")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(got.astype(jnp.float32), ref.astype(jnp.bfloat16).astype(jnp.float32))


def test_camera_input_refuses_a_layout_that_does_not_fit():
    camera = jnp.zeros((2, 4, 84, 84), jnp.uint8)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"Ho\*block <= H"):
        jax.block_until_ready(onednn.camera_input(camera, 4, (22, 21)))
    with pytest.raises(ValueError, match="'float32' or 'bfloat16'"):
        onednn.camera_input(camera, 4, (21, 21), "float16")


# (H, W, kernel, stride): the NatureCNN's first layer (space-to-depth forward), a camera it crops, and a kernel
# that is not a multiple of the stride (the forward over the plain layout).
CAMERA_CONVS = [(84, 84, 8, 4), (83, 81, 8, 4), (23, 23, 5, 3)]


@pytest.mark.parametrize("h,w,k,stride", CAMERA_CONVS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_camera_conv_is_conv2d_of_the_scaled_camera(h, w, k, stride, dtype):
    """Forward and the gradients of kernel and bias: the same as conv2d_onednn over XLA's scaled, transposed
    camera (summed in another order: the forward runs over the space-to-depth layout)."""
    rng = np.random.default_rng(5)
    camera = jnp.asarray(rng.integers(0, 256, (3, 4, h, w), dtype=np.uint8))
    wk = jnp.asarray(rng.standard_normal((k, k, 4, 16)) / np.sqrt(k * k * 4), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(16), jnp.float32)
    x = jnp.transpose(scale_camera(camera), (0, 2, 3, 1))

    def run(conv, inp):
        f = lambda wk, bias: conv(inp, wk, bias, stride, dtype)  # noqa: E731
        y = jax.jit(f)(wk, bias)
        cot = jnp.asarray(np.random.default_rng(6).standard_normal(y.shape), jnp.float32)
        return y, jax.jit(jax.grad(lambda wk, bias: jnp.sum(f(wk, bias) * cot), argnums=(0, 1)))(wk, bias)

    y, grads = run(onednn.camera_conv_onednn, camera)
    y_ref, grads_ref = run(onednn.conv2d_onednn, x)
    tol = 1e-5 if dtype == "float32" else 1e-2  # bfloat16: the products' rounding depends on their order
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol * float(jnp.max(jnp.abs(y_ref))))
    _assert_trees_close(grads, grads_ref)


def test_nature_cnn_with_onednn_in_bfloat16_reads_the_uint8_camera_once_per_pass():
    camera = jnp.zeros((2, 4, 84, 84), jnp.uint8)
    net = NatureCNN(norm="none", conv_impl="onednn", compute_dtype="bfloat16")
    params = net.init(jax.random.key(0), camera, train=False)["params"]
    forward = str(jax.make_jaxpr(lambda p: net.apply({"params": p}, camera, train=False))(params))
    assert forward.count("jtd3_camera_input") == 1 and "f32[2,84,84,4]" not in forward  # no transpose by XLA
    grad = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(net.apply({"params": p}, camera, train=True))))(params)
    assert str(grad).count("jtd3_camera_input") == 2  # the forward's (bfloat16, space-to-depth), the backward's
    assert params["conv1"]["kernel"].shape == (8, 8, 4, 32)  # the parameters do not depend on conv_impl
    f32 = NatureCNN(norm="none", conv_impl="onednn")  # float32: XLA's transpose (the C++ pass was slower there)
    f32_forward = jax.make_jaxpr(lambda p: f32.apply({"params": p}, camera, train=False))(params)
    assert "jtd3_camera_input" not in str(f32_forward)
