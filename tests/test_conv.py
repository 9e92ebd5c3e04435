"""The custom-VJP im2col convolution computes exactly what lax.conv computes: forward and both gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jtd3.agent.conv import conv2d, conv2d_on_space_to_depth, conv2d_s1_shifts
from jtd3.agent.layout import camera_to_space_to_depth, space_to_depth

DN = ("NHWC", "HWIO", "NHWC")
# (H, C_in, kernel, stride, C_out): the NatureCNN layers, plus a stride-1 non-square-ish case.
LAYERS = [(84, 4, 8, 4, 32), (20, 32, 4, 2, 64), (9, 64, 3, 1, 64), (11, 3, 2, 2, 5)]


def _reference(x, w, stride):
    return lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=DN)


def _inputs(h, cin, k, cout, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, h, h, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    return x, w


@pytest.mark.parametrize("h,cin,k,stride,cout", LAYERS)
@pytest.mark.parametrize("batch,chunk", [(5, 2), (4, 16)])  # 5 = 2 chunks of 2 + a zero-padded chunk
def test_forward_and_gradients_match_lax_conv(h, cin, k, stride, cout, batch, chunk):
    x, w = _inputs(h, cin, k, cout, batch)
    ho = (h - k) // stride + 1
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((batch, ho, ho, cout)), jnp.float32)

    def loss(fn):
        return lambda x, w: jnp.sum(fn(x, w) * cot)

    ours = jax.jit(lambda x, w: conv2d(x, w, stride, impl="im2col", chunk=chunk))
    ref = jax.jit(lambda x, w: _reference(x, w, stride))
    y, y_ref = ours(x, w), ref(x, w)
    chex.assert_shape(y, (batch, ho, ho, cout))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dx, dw = jax.jit(jax.grad(loss(lambda x, w: conv2d(x, w, stride, "im2col", chunk)), argnums=(0, 1)))(x, w)
    dx_ref, dw_ref = jax.jit(jax.grad(loss(lambda x, w: _reference(x, w, stride)), argnums=(0, 1)))(x, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=2e-5 * float(jnp.max(jnp.abs(dw_ref))))


def test_xla_impl_is_lax_conv():
    x, w = _inputs(20, 32, 4, 64, 3)
    np.testing.assert_array_equal(conv2d(x, w, 2, impl="xla"), _reference(x, w, 2))


def test_camera_space_to_depth_path_matches_float_pipeline():
    rng = np.random.default_rng(2)
    camera = jnp.asarray(rng.integers(0, 256, (3, 4, 84, 84), dtype=np.uint8))
    x = jnp.transpose(camera.astype(jnp.float32) / 127.5 - 1.0, (0, 2, 3, 1))
    np.testing.assert_allclose(camera_to_space_to_depth(camera, 8, 4), space_to_depth(x, 4), atol=1e-6)
    _, w = _inputs(84, 4, 8, 32, 1)
    xs = camera_to_space_to_depth(camera, 8, 4)
    np.testing.assert_allclose(conv2d_on_space_to_depth(xs, w, 4), _reference(x, w, 4), rtol=1e-5, atol=1e-5)


def test_gradients_inside_scan_match():
    """The op also differentiates correctly nested in an outer lax.scan (as in update_many)."""
    x, w = _inputs(9, 8, 3, 4, 3)

    def body(w, xs):
        g = jax.grad(lambda w: jnp.sum(jnp.tanh(conv2d(xs, w, 1, "im2col", 2))))(w)
        return w - 0.1 * g, jnp.sum(g)

    def body_ref(w, xs):
        g = jax.grad(lambda w: jnp.sum(jnp.tanh(_reference(xs, w, 1))))(w)
        return w - 0.1 * g, jnp.sum(g)

    stacked = jnp.stack([x, 2 * x])
    w1, s1 = jax.jit(lambda w: lax.scan(body, w, stacked))(w)
    w2, s2 = jax.jit(lambda w: lax.scan(body_ref, w, stacked))(w)
    np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s1, s2, rtol=1e-4)


def test_bad_arguments_are_named():
    x, w = _inputs(11, 3, 3, 5, 2)
    with pytest.raises(ValueError, match=r"multiples of the stride.*\(3, 3\).*stride 2"):
        conv2d(x, w, 2, impl="im2col")
    with pytest.raises(ValueError, match=r"'fft' is not one of \('im2col', 'xla', 'onednn'\)"):
        conv2d(x, w, 1, impl="fft")
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        conv2d(x, w, 1, chunk=0)


@pytest.mark.parametrize("h,cin,k,cout,batch", [(9, 5, 2, 3, 2), (7, 4, 3, 6, 3), (21, 64, 2, 32, 2)])
def test_shift_form_matches_lax_conv(h, cin, k, cout, batch):
    """conv2d_s1_shifts (products on the output side) = the stride-1 convolution, forward and both gradients."""
    x, w = _inputs(h, cin, k, cout, batch)
    ho = h - k + 1
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((batch, ho, ho, cout)), jnp.float32)
    np.testing.assert_allclose(jax.jit(conv2d_s1_shifts)(x, w), _reference(x, w, 1), rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda x, w: jnp.sum(conv2d_s1_shifts(x, w) * cot), argnums=(0, 1)))(x, w)
    refs = jax.jit(jax.grad(lambda x, w: jnp.sum(_reference(x, w, 1) * cot), argnums=(0, 1)))(x, w)
    for got, ref in zip(grads, refs):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5 * float(jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize("impl", ["im2col", "xla"])
@pytest.mark.parametrize("h,cin,k,stride,cout", LAYERS[:3])
def test_bfloat16_products_stay_close_and_return_float32(impl, h, cin, k, stride, cout):
    """compute_dtype bfloat16: float32 results and gradients within bfloat16 rounding of the float32 ones."""
    x, w = _inputs(h, cin, k, cout, 3)
    ho = (h - k) // stride + 1
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((3, ho, ho, cout)), jnp.float32)

    def run(dtype):
        fn = lambda x, w: conv2d(x, w, stride, impl, 2, dtype)  # noqa: E731
        y = jax.jit(fn)(x, w)
        return y, jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w) * cot), argnums=(0, 1)))(x, w)

    (y, (dx, dw)), (y32, (dx32, dw32)) = run("bfloat16"), run("float32")
    for got, ref in ((y, y32), (dx, dx32), (dw, dw32)):
        assert got.dtype == jnp.float32
        rel = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
        assert rel < 2e-2, rel  # bfloat16 keeps 8 significant bits: ~0.4 % per operand
        assert rel > 0.0  # the products really ran in bfloat16


def test_unknown_compute_dtype_is_refused_by_name():
    x, w = _inputs(9, 4, 3, 5, 1)
    with pytest.raises(ValueError, match="float16"):
        conv2d(x, w, 1, compute_dtype="float16")
