"""2-D convolution (NHWC activations, HWIO kernels, VALID padding) with a CPU-friendly custom VJP.

Why: XLA:CPU's convolution weight gradient is slow, and its convolutions scale worse than linearly with the
batch (docs/agent.md has the measurements). This module computes the same function with three ingredients:

1. **Space-to-depth.** A stride-``s`` convolution whose kernel size is a multiple of ``s`` equals a stride-1
   convolution on the ``s x s`` space-to-depth rearrangement of its input with a rearranged kernel
   (``8x8/4`` on 84x84x4 -> ``2x2/1`` on 21x21x64; ``4x4/2`` on 20x20x32 -> ``2x2/1`` on 10x10x128). The
   rearrangements are reshapes/transposes, differentiated by JAX as usual.
2. **A stride-1 convolution with a custom VJP** (:func:`conv2d_s1`), all matmuls:
   forward = im2col (``kh*kw`` contiguous shifted slices, concatenated on the channel axis) + one matmul;
   weight gradient = the same patches (recomputed per chunk, not stored) transposed times the output
   cotangent; input gradient = one matmul with the kernel + ``kh*kw`` shifted, zero-padded adds (col2im).
3. **Batch chunking**: forward and both gradients run over batch chunks of ``chunk`` samples in a
   ``lax.map`` loop (the weight gradient summed over chunks), which keeps the working set in cache. XLA's own
   convolutions are *much* slower inside a loop (weight gradient: ~15-30x), which is one reason the loop
   bodies are matmuls. Materialising the patches of a whole B = 256 batch (105 MB for the first layer) is
   memory-bound on this machine; per chunk they stay in cache.

:func:`conv2d` is the entry point; ``impl="xla"`` is plain ``lax.conv_general_dilated`` (use it on GPU,
where XLA calls cuDNN). Both implementations compute the same function; ``tests/test_conv.py`` checks the
forward pass and both gradients against ``lax.conv_general_dilated``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "CONV_IMPLS",
    "camera_to_space_to_depth",
    "conv2d",
    "conv2d_on_space_to_depth",
    "conv2d_s1",
    "conv_output_size",
    "space_to_depth",
    "space_to_depth_kernel",
]

CONV_IMPLS = ("im2col", "xla")
"""Valid ``impl`` values of :func:`conv2d`."""

_DN = ("NHWC", "HWIO", "NHWC")


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """Output length of a VALID convolution along one spatial axis."""
    return (size - kernel) // stride + 1


def space_to_depth(x: jax.Array, s: int) -> jax.Array:
    """``(B, H, W, C) -> (B, H/s, W/s, s*s*C)``; the new channel index is ``(row_offset, col_offset, c)``."""
    b, h, w, c = x.shape
    if h % s or w % s:
        raise ValueError(f"space_to_depth: spatial size {(h, w)} is not a multiple of the block size {s}")
    x = x.reshape(b, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // s, w // s, s * s * c)


def space_to_depth_kernel(w: jax.Array, s: int) -> jax.Array:
    """HWIO kernel ``(kh, kw, C, O) -> (kh/s, kw/s, s*s*C, O)`` matching :func:`space_to_depth`'s layout."""
    kh, kw, c, o = w.shape
    if kh % s or kw % s:
        raise ValueError(f"space_to_depth_kernel: kernel {(kh, kw)} is not a multiple of the stride {s}")
    w = w.reshape(kh // s, s, kw // s, s, c, o).transpose(0, 2, 1, 3, 4, 5)
    return w.reshape(kh // s, kw // s, s * s * c, o)


def _xla_conv(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    return lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=_DN)


def _im2col(x: jax.Array, kh: int, kw: int, ho: int, wo: int) -> jax.Array:
    """Stride-1 patches ``(B, ho, wo, kh*kw*C)``, feature order ``(i, j, c)`` = HWIO's ``(H, W, I)``."""
    return jnp.concatenate([x[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_s1(x: jax.Array, w: jax.Array, chunk: int) -> jax.Array:
    """Stride-1 VALID convolution, NHWC x HWIO -> NHWC, with the im2col/matmul custom VJP (module doc)."""
    kh, kw, cin, cout = w.shape
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    w_mat = w.reshape(kh * kw * cin, cout)
    return _chunked_map(lambda xb: jnp.einsum("bhwp,po->bhwo", _im2col(xb, kh, kw, ho, wo), w_mat), chunk, x)


def _conv2d_s1_fwd(x, w, chunk):
    return conv2d_s1(x, w, chunk), (x, w)


def _conv2d_s1_bwd(chunk, res, g):
    x, w = res
    kh, kw, cin, cout = w.shape
    _, h, wd, _ = x.shape
    _, ho, wo, _ = g.shape

    def weight_grad(xb, gb):
        patches = _im2col(xb, kh, kw, ho, wo)
        # (O, P) rather than (P, O): the operand XLA transposes for the dot is then the cotangent, not the
        # larger patch matrix.
        return jnp.einsum("bhwo,bhwp->op", gb, patches)

    dw = _chunked_sum(weight_grad, chunk, x, g).T.reshape(w.shape)

    w_mat = w.reshape(kh * kw * cin, cout)

    def input_grad(gb):
        dp = jnp.einsum("bhwo,po->bhwp", gb, w_mat).reshape(gb.shape[0], ho, wo, kh, kw, cin)
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

    dx = _chunked_map(input_grad, chunk, g)
    return dx, dw


conv2d_s1.defvjp(_conv2d_s1_fwd, _conv2d_s1_bwd)


def conv2d(x: jax.Array, w: jax.Array, stride: int, impl: str = "im2col", chunk: int = 16) -> jax.Array:
    """VALID 2-D convolution of ``x`` (B, H, W, C) with kernel ``w`` (kh, kw, C, O) at ``stride``.

    ``impl="xla"``: ``lax.conv_general_dilated``. ``impl="im2col"``: space-to-depth (for stride > 1; the
    kernel size must be a multiple of the stride) + :func:`conv2d_s1` over batch chunks of ``chunk``.
    Returns (B, Ho, Wo, O) with ``Ho = (H - kh) // stride + 1``.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r} is not one of {CONV_IMPLS}")
    if x.ndim != 4 or w.ndim != 4 or x.shape[-1] != w.shape[2]:
        raise ValueError(f"conv2d: expected x (B,H,W,C) and w (kh,kw,C,O), got {x.shape} and {w.shape}")
    if chunk < 1:
        raise ValueError(f"conv2d: chunk must be >= 1, got {chunk}")
    if impl == "xla":
        return _xla_conv(x, w, stride)
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
    return conv2d_s1(x, w, chunk)


def camera_to_space_to_depth(camera: jax.Array, kernel: int, stride: int) -> jax.Array:
    """uint8 NCHW camera -> float32 space-to-depth NHWC input of a VALID ``kernel``/``stride`` first conv.

    Equivalent to ``space_to_depth(crop(transpose(camera / 127.5 - 1)), stride)`` but transposes the uint8
    data once (4x less memory traffic than transposing floats twice). ``kernel`` must be a multiple of
    ``stride``; rows/columns a VALID convolution never reads are cropped. Output:
    ``(B, Ho - 1 + kernel/stride, Wo - 1 + kernel/stride, stride*stride*C)`` in [-1, 1].
    """
    if kernel % stride:
        raise ValueError(f"kernel {kernel} is not a multiple of the stride {stride}")
    b, c, h, w = camera.shape
    hh = (conv_output_size(h, kernel, stride) - 1) * stride + kernel
    ww = (conv_output_size(w, kernel, stride) - 1) * stride + kernel
    x = camera[:, :, :hh, :ww].reshape(b, c, hh // stride, stride, ww // stride, stride)
    x = x.transpose(0, 2, 4, 3, 5, 1).reshape(b, hh // stride, ww // stride, stride * stride * c)
    return x.astype(jnp.float32) * (1.0 / 127.5) - 1.0


def conv2d_on_space_to_depth(x_s2d: jax.Array, w: jax.Array, stride: int, chunk: int = 16) -> jax.Array:
    """:func:`conv2d` (``impl="im2col"``) for an input already in space-to-depth layout (block ``stride``).

    ``w`` is the ordinary HWIO kernel ``(kh, kw, C, O)``; ``x_s2d`` comes from :func:`space_to_depth` or
    :func:`camera_to_space_to_depth` with the same ``stride``.
    """
    return conv2d_s1(x_s2d, space_to_depth_kernel(w, stride), chunk)
