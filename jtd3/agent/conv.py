"""2-D convolution (NHWC activations, HWIO kernels, VALID padding) with CPU-friendly custom VJPs.

Why: XLA:CPU's own convolutions are slow (their weight gradient most of all), and inside ``lax.scan`` /
``lax.cond`` they take a slower path still (docs/agent.md has the measurements). This module computes the same
function from matmuls and re-layouts:

1. **Space-to-depth.** A stride-``s`` convolution whose kernel size is a multiple of ``s`` equals a stride-1
   convolution on the ``s x s`` space-to-depth rearrangement of its input with a rearranged kernel
   (``8x8/4`` on 84x84x4 -> ``2x2/1`` on 21x21x64; ``4x4/2`` on 20x20x32 -> ``2x2/1`` on 10x10x128). The
   rearrangements are reshapes/transposes, differentiated by JAX as usual.
2. **Stride-1 convolutions with a custom VJP**, in two forms that compute the same function:
   :func:`conv2d_s1` (patches): forward = im2col (``kh*kw`` shifted slices stacked next to the channels) +
   one matmul; weight gradient = the same patches (recomputed, not stored) times the output cotangent; input
   gradient = one matmul with the kernel + ``kh*kw`` shifted, zero-padded adds (col2im).
   :func:`conv2d_s1_shifts` (output side): one wide matmul of the input with every tap's kernel, then
   ``kh*kw`` shifted adds; no patch matrix. The first NatureCNN layer uses it: its input is the camera's
   space-to-depth layout change, which XLA fuses into a patch gather that it runs several times slower than
   the matmul itself.
3. **Batch chunking** (patches form): forward and both gradients run over batch chunks of ``chunk`` samples
   in a ``lax.map`` loop (the weight gradient summed over chunks), which keeps the patches in cache at
   large batches.

``compute_dtype`` (:data:`COMPUTE_DTYPES`) is the dtype of the matmul operands; results and accumulation
are float32, and gradients come back in the parameters' dtype (mixed precision).
:func:`conv2d` is the entry point; ``impl="xla"`` is plain ``lax.conv_general_dilated`` (use it on GPU,
where XLA calls cuDNN); ``impl="onednn"`` calls oneDNN's convolutions through the XLA FFI
(:mod:`jtd3.agent.onednn`; CPU only, opt-in, the fastest there where oneDNN is installed).
``tests/test_conv.py`` checks every form's forward pass and both gradients against ``lax.conv_general_dilated``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jtd3.agent.layout import conv_output_size, space_to_depth, space_to_depth_kernel

__all__ = [
    "COMPUTE_DTYPES",
    "CONV_IMPLS",
    "DEFAULT_CHUNK",
    "conv2d",
    "conv2d_on_space_to_depth",
    "conv2d_s1",
    "conv2d_s1_shifts",
]

CONV_IMPLS = ("im2col", "xla", "onednn")
"""Valid ``impl`` values of :func:`conv2d`."""

COMPUTE_DTYPES = ("float32", "bfloat16")
"""Valid ``compute_dtype`` values: the dtype of the matmul operands (results are float32 either way)."""

DEFAULT_CHUNK = 64
"""Default batch chunk of the im2col form (``agent.conv_chunk``): a batch of 64 runs as one block, 256 as four
chunks. 3-9 % faster than 16 on the Intel Xeon VM, and no worse in the learning benchmark there (5 seeds each:
247 vs 236 of 250 fresh episodes completed, 4 vs 3 seeds meeting the goal), docs/agent.md "``conv_chunk`` 64"."""

_DN = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, w: jax.Array, stride: int, compute_dtype: str = "float32") -> jax.Array:
    x, w = x.astype(compute_dtype), w.astype(compute_dtype)
    return lax.conv_general_dilated(
        x, w, (stride, stride), "VALID", dimension_numbers=_DN, preferred_element_type=jnp.float32
    )


def _im2col(x: jax.Array, kh: int, kw: int, ho: int, wo: int) -> jax.Array:
    """Stride-1 patches ``(B, ho, wo, kh*kw*C)``, feature order ``(i, j, c)`` = HWIO's ``(H, W, I)``."""
    b, c = x.shape[0], x.shape[-1]
    # Stacked on a new axis next to the channels, then merged with them: the same layout as concatenating on
    # the channel axis, but XLA:CPU emits the stack as one fast loop where its channel-axis concatenate is
    # several times slower (docs/agent.md).
    slices = [x[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)]
    return jnp.stack(slices, axis=-2).reshape(b, ho, wo, kh * kw * c)


def _split_chunks(chunk: int, arrays: tuple[jax.Array, ...]) -> tuple[int, tuple[jax.Array, ...]]:
    """``(n, arrays reshaped to (n, chunk, ...))`` with B zero-padded up to a multiple of ``chunk``."""
    b = arrays[0].shape[0]
    n = -(-b // chunk)
    pad = n * chunk - b
    if pad:
        arrays = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in arrays)
    return n, tuple(a.reshape(n, chunk, *a.shape[1:]) for a in arrays)


def _chunked_map(fn, chunk: int, *arrays: jax.Array) -> jax.Array:
    """``fn`` applied to batch chunks of ``arrays`` (same leading size B) sequentially; results concatenated.

    B is zero-padded up to a multiple of ``chunk`` (the padded rows are dropped from the result).
    """
    b = arrays[0].shape[0]
    if b <= chunk:
        return fn(*arrays)
    n, split = _split_chunks(chunk, arrays)
    out = lax.map(lambda parts: fn(*parts), split)
    return out.reshape(n * chunk, *out.shape[2:])[:b]


def _chunked_sum(fn, chunk: int, *arrays: jax.Array) -> jax.Array:
    """Sum over batch chunks of ``fn(*chunk_arrays)`` (zero-padded rows must contribute zero)."""
    if arrays[0].shape[0] <= chunk:
        return fn(*arrays)
    _, split = _split_chunks(chunk, arrays)
    return jnp.sum(lax.map(lambda parts: fn(*parts), split), axis=0)


def _matmul(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``einsum`` with float32 results (and accumulation) whatever the operands' dtype."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_s1(x: jax.Array, w: jax.Array, chunk: int, compute_dtype: str = "float32") -> jax.Array:
    """Stride-1 VALID convolution, NHWC x HWIO -> NHWC, with the im2col/matmul custom VJP (module doc).

    ``compute_dtype``: the dtype of the matmul operands (``x`` and ``w`` are cast to it, patches are built in
    it); products are accumulated and returned in float32, and the gradients come back in the dtypes of
    ``x`` and ``w`` (mixed precision: float32 parameters, bfloat16 matmuls).
    """
    kh, kw, cin, cout = w.shape
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    w_mat = w.astype(compute_dtype).reshape(kh * kw * cin, cout)
    x = x.astype(compute_dtype)
    return _chunked_map(lambda xb: _matmul("bhwp,po->bhwo", _im2col(xb, kh, kw, ho, wo), w_mat), chunk, x)


def _conv2d_s1_fwd(x, w, chunk, compute_dtype):
    return conv2d_s1(x, w, chunk, compute_dtype), (x, w)


def _conv2d_s1_bwd(chunk, compute_dtype, res, g):
    x, w = res
    kh, kw, cin, cout = w.shape
    _, h, wd, _ = x.shape
    _, ho, wo, _ = g.shape
    xc, gc = x.astype(compute_dtype), g.astype(compute_dtype)

    def weight_grad(xb, gb):
        patches = _im2col(xb, kh, kw, ho, wo)
        # (O, P) rather than (P, O): the operand XLA transposes for the dot is then the cotangent, not the
        # larger patch matrix.
        return _matmul("bhwo,bhwp->op", gb, patches)

    dw_op = _chunked_sum(weight_grad, chunk, xc, gc)
    # The barrier keeps XLA from folding the small transpose below into the dot's output layout, which sends
    # the dot to a slow generic kernel (one without bfloat16 x bfloat16 -> float32 support).
    dw = lax.optimization_barrier(dw_op).T.reshape(w.shape).astype(w.dtype)

    w_mat = w.astype(compute_dtype).reshape(kh * kw * cin, cout)

    def input_grad(gb):
        dp = _matmul("bhwo,po->bhwp", gb, w_mat).reshape(gb.shape[0], ho, wo, kh, kw, cin)
        dx = None
        for i in range(kh):
            for j in range(kw):
                part = lax.pad(
                    dp[:, :, :, i, j, :],
                    jnp.array(0, dp.dtype),
                    ((0, 0, 0), (i, h - ho - i, 0), (j, wd - wo - j, 0), (0, 0, 0)),
                )
                dx = part if dx is None else dx + part
        return dx

    dx = _chunked_map(input_grad, chunk, gc).astype(x.dtype)
    return dx, dw


conv2d_s1.defvjp(_conv2d_s1_fwd, _conv2d_s1_bwd)


def _shift_kernel(w: jax.Array, compute_dtype: str) -> jax.Array:
    """HWIO ``(kh, kw, C, O)`` -> ``(C, kh*kw*O)``: one matmul applies every kernel tap at every position."""
    kh, kw, cin, cout = w.shape
    return w.astype(compute_dtype).transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_s1_shifts(x: jax.Array, w: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """Stride-1 VALID convolution computed on the output side: ``Y = x @ W`` with ``W`` = every tap's
    ``(C, O)`` matrix side by side, then ``out = sum_ij Y[:, i:i+ho, j:j+wo, tap ij]``.

    The same function as :func:`conv2d_s1` with different costs: ``kh*kw*(H*W)/(ho*wo)`` times its products
    (1.1x for the first NatureCNN layer), in one wide matmul (``N = kh*kw*O``) on the input as it is, with no
    patch matrix. The patch gather is what XLA:CPU handles worst when the input is itself a fused layout
    change (the camera's space-to-depth), so the first layer uses this form (docs/agent.md).
    Gradients: ``dY`` = the cotangent shifted into each tap's place (zero-padded, stacked);
    ``dW = x^T dY``, ``dx = dY W^T``.
    """
    kh, kw, cin, cout = w.shape
    b, h, wd, _ = x.shape
    ho, wo = h - kh + 1, wd - kw + 1
    y = _matmul("bhwc,cp->bhwp", x.astype(compute_dtype), _shift_kernel(w, compute_dtype))
    y = y.reshape(b, h, wd, kh, kw, cout)
    out = None
    for i in range(kh):
        for j in range(kw):
            part = y[:, i : i + ho, j : j + wo, i, j, :]
            out = part if out is None else out + part
    return out


def _conv2d_s1_shifts_fwd(x, w, compute_dtype):
    return conv2d_s1_shifts(x, w, compute_dtype), (x, w)


def _conv2d_s1_shifts_bwd(compute_dtype, res, g):
    x, w = res
    kh, kw, cin, cout = w.shape
    b, h, wd, _ = x.shape
    ho, wo = h - kh + 1, wd - kw + 1
    g = g.astype(compute_dtype)
    taps = [jnp.pad(g, ((0, 0), (i, h - ho - i), (j, wd - wo - j), (0, 0))) for i in range(kh) for j in range(kw)]
    dy = jnp.stack(taps, axis=3).reshape(b, h, wd, kh * kw * cout)
    dw = _matmul("bhwc,bhwp->cp", x.astype(compute_dtype), dy)
    dw = dw.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3).astype(w.dtype)
    dx = _matmul("bhwp,cp->bhwc", dy, _shift_kernel(w, compute_dtype)).astype(x.dtype)
    return dx, dw


conv2d_s1_shifts.defvjp(_conv2d_s1_shifts_fwd, _conv2d_s1_shifts_bwd)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    stride: int,
    impl: str = "im2col",
    chunk: int = DEFAULT_CHUNK,
    compute_dtype: str = "float32",
) -> jax.Array:
    """VALID 2-D convolution of ``x`` (B, H, W, C) with kernel ``w`` (kh, kw, C, O) at ``stride``.

    ``impl="xla"``: ``lax.conv_general_dilated``. ``impl="onednn"``: :func:`jtd3.agent.onednn.conv2d_onednn`
    (``chunk`` unused). ``impl="im2col"``: space-to-depth (for stride > 1; the kernel size must be a multiple of
    the stride) + :func:`conv2d_s1` over batch chunks of ``chunk``.
    ``compute_dtype`` (one of :data:`COMPUTE_DTYPES`): the dtype the products' operands are cast to.
    Returns float32 (B, Ho, Wo, O) with ``Ho = (H - kh) // stride + 1``.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r} is not one of {CONV_IMPLS}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"conv compute_dtype {compute_dtype!r} is not one of {COMPUTE_DTYPES}")
    if x.ndim != 4 or w.ndim != 4 or x.shape[-1] != w.shape[2]:
        raise ValueError(f"conv2d: expected x (B,H,W,C) and w (kh,kw,C,O), got {x.shape} and {w.shape}")
    if chunk < 1:
        raise ValueError(f"conv2d: chunk must be >= 1, got {chunk}")
    if impl == "xla":
        return _xla_conv(x, w, stride, compute_dtype)
    if impl == "onednn":
        from jtd3.agent.onednn import conv2d_onednn  # builds the C++ kernel on first use

        return conv2d_onednn(x, w, jnp.zeros(w.shape[-1], jnp.float32), stride, compute_dtype)
    kh, kw = w.shape[:2]
    if stride > 1:
        if kh % stride or kw % stride:
            raise ValueError(
                f"conv2d impl='im2col' needs kernel sizes that are multiples of the stride, got kernel "
                f"{(kh, kw)} with stride {stride}; use impl='xla'"
            )
        ho = conv_output_size(x.shape[1], kh, stride)
        wo = conv_output_size(x.shape[2], kw, stride)
        # Only rows/cols up to (ho-1)*stride + kh are read by a VALID conv (a multiple of the stride here).
        x = x[:, : (ho - 1) * stride + kh, : (wo - 1) * stride + kw, :]
        x = space_to_depth(x, stride)
        w = space_to_depth_kernel(w, stride)
    return conv2d_s1(x, w, chunk, compute_dtype)


def conv2d_on_space_to_depth(x_s2d: jax.Array, w: jax.Array, stride: int, compute_dtype: str = "float32") -> jax.Array:
    """The VALID ``stride`` convolution with HWIO kernel ``w`` ``(kh, kw, C, O)`` of an input already in
    space-to-depth layout (block ``stride``, from :mod:`jtd3.agent.layout`), computed by :func:`conv2d_s1_shifts`
    (the form that suits a freshly re-laid-out input)."""
    return conv2d_s1_shifts(x_s2d, space_to_depth_kernel(w, stride), compute_dtype)
