"""Array layouts shared by the convolution implementations (:mod:`jtd3.agent.conv`, :mod:`jtd3.agent.onednn`):
the camera's scaling, VALID output sizes, and the space-to-depth rearrangement of activations, kernels and the
uint8 camera (a stride-``s`` convolution whose kernel is a multiple of ``s`` equals a stride-1 convolution over
the ``s x s`` space-to-depth input with the rearranged kernel)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "CAMERA_OFFSET",
    "CAMERA_SCALE",
    "camera_to_space_to_depth",
    "conv_output_size",
    "scale_camera",
    "space_to_depth",
    "space_to_depth_kernel",
]

CAMERA_SCALE, CAMERA_OFFSET = 1.0 / 127.5, -1.0
"""The encoder's input is ``camera * CAMERA_SCALE + CAMERA_OFFSET`` in float32: uint8 0..255 -> [-1, 1]."""


def scale_camera(camera: jax.Array) -> jax.Array:
    """uint8 camera values (0..255) -> the encoder's float32 input scale, [-1, 1]."""
    return camera.astype(jnp.float32) * CAMERA_SCALE + CAMERA_OFFSET


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
    return scale_camera(x)
