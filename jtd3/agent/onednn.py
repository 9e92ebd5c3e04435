"""Convolutions and matrix products through oneDNN on the CPU (``agent.conv_impl: onednn``), with the conv layers'
LayerNorm and activation as one C++ kernel, called with the XLA FFI.

oneDNN runs the convolutions directly on the NHWC activations (no patch matrix, no re-layout by XLA) and, with
``compute_dtype: bfloat16``, on the AMX units of the CPUs that have them; the first one reads the uint8 camera,
scaled and laid out by a C++ pass of its own (:func:`camera_conv_onednn`); the conv layers' LayerNorm and leaky
ReLU (:func:`layer_norm_act`, used by ``networks.LayerNormAct``) run as one pass each way. The kernels are C++
(``native/onednn_conv.cc``, ``native/layer_norm_act.cc``, ``native/camera.cc``); they are compiled on first use
with the system C++ compiler against oneDNN's headers and library and jaxlib's FFI headers, and cached under
``$XDG_CACHE_HOME/jtd3/native`` (default ``~/.cache``) by a hash of the sources, the jaxlib version, the compiler
and its command line (the compiler also reads ``CPATH`` and ``LIBRARY_PATH`` for a oneDNN outside the system
paths; a build unused for 30 days is deleted when another is made). It needs ``g++`` and oneDNN 2.x
(Debian/Ubuntu: ``apt-get install g++ libdnnl-dev``); without them asking for ``onednn`` fails with a message that
says so: there is no silent fallback, and ``im2col`` (the default) needs nothing of this.

:func:`conv2d_onednn` is a VALID convolution with a custom VJP: forward, input gradient and weight gradient
are one oneDNN primitive each; all three return float32 (float32 accumulation in bfloat16 too).
:func:`dense_onednn` is the encoder's dense layer as oneDNN matmuls with a custom VJP (at B = 64 its float32
products run at 220-310 GFLOP/s where XLA's reach 160-195, and in bfloat16 they run on AMX and return float32,
with no conversion of the weight gradient afterwards). :func:`layer_norm_act` has a custom VJP too (float32;
the activation's gradient from the pre-activation recomputed in the backward, nothing extra stored).
:func:`camera_conv_onednn` is :func:`conv2d_onednn` of the scaled camera, its forward over the camera's
space-to-depth layout. ``tests/test_onednn.py`` checks them against ``lax.conv_general_dilated``, ``jnp.dot``,
Flax's ``nn.LayerNorm`` followed by JAX's activation, and XLA's scaled and transposed camera.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from jtd3.agent.layout import CAMERA_OFFSET, CAMERA_SCALE, conv_output_size, space_to_depth_kernel

__all__ = [
    "OneDNNUnavailable", "camera_conv_onednn", "camera_input", "conv2d_onednn", "dense_onednn", "ensure_loaded",
    "layer_norm_act", "unavailable_reason",
]

_SOURCES = tuple(
    Path(__file__).with_name("native") / name for name in ("onednn_conv.cc", "layer_norm_act.cc", "camera.cc")
)
_TARGETS = ("jtd3_onednn_conv_fwd", "jtd3_onednn_conv_bwd_data", "jtd3_onednn_conv_bwd_w")
_LN_TARGETS = ("jtd3_ln_act_fwd", "jtd3_ln_act_bwd")
_MATMUL = "jtd3_onednn_matmul"
_CAMERA = "jtd3_camera_input"
SETUP_HINT = "install a C++ compiler and oneDNN 2.x (Debian/Ubuntu: apt-get install g++ libdnnl-dev)"


class OneDNNUnavailable(RuntimeError):
    """``conv_impl: onednn`` was asked for but its kernel cannot be built or loaded on this machine."""


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jtd3" / "native"


def _compiler() -> str:
    """``$CXX`` if set, else ``g++``, resolved on ``PATH``."""
    name = os.environ.get("CXX") or "g++"
    cxx = shutil.which(name)
    if not cxx:
        raise OneDNNUnavailable(f"conv_impl 'onednn': C++ compiler {name!r} not found; {SETUP_HINT}")
    return cxx


def _build() -> Path:
    """Compile the kernel once per (source, jaxlib, compiler, command) and return the shared library's path."""
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    # -w: jaxlib's FFI headers warn under g++ 12; a failure's own message is what the user needs to see.
    # -fopenmp: the LayerNorm kernel's threads (libgomp, the OpenMP runtime Debian's oneDNN uses too);
    # -fno-trapping-math lets g++ turn its loops' selects into blends and vectorize them (no FP traps are used).
    cmd = [cxx, "-O2", "-fno-trapping-math", "-w", "-std=c++17", "-fopenmp", "-shared", "-fPIC",
           f"-I{jax.ffi.include_dir()}", *map(str, _SOURCES), "-ldnnl"]
    key = b"".join(src.read_bytes() for src in _SOURCES) + f"{jaxlib.__version__}\n{version}\n{cmd}".encode()
    out = _cache_dir() / f"onednn_conv-{hashlib.sha256(key).hexdigest()[:16]}.so"
    if out.exists():
        try:
            os.utime(out)  # its modification time is its last use (_prune_stale)
        except OSError:  # a cache this user may read but not write: used as it is
            pass
        return out
    # Compile to a temporary name and rename: concurrent first uses (test workers) never see half a file.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".so", delete=False) as tmp:
            tmp_path = Path(tmp.name)
    except OSError as e:
        raise OneDNNUnavailable(f"conv_impl 'onednn': cannot write the kernel's cache {out.parent}: {e} "
                                "(set XDG_CACHE_HOME to a writable directory)") from e
    try:
        done = subprocess.run([*cmd, "-o", str(tmp_path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise OneDNNUnavailable(
                f"conv_impl 'onednn': compiling {', '.join(src.name for src in _SOURCES)} failed "
                f"({' '.join(cmd)}); {SETUP_HINT}.\n"
                + done.stderr[-2000:]
            )
        os.replace(tmp_path, out)
    finally:
        tmp_path.unlink(missing_ok=True)
    _prune_stale(out)
    return out


STALE_DAYS = 30
"""A cached build unused for this many days is deleted when another one is built (one per source change)."""


def _prune_stale(keep: Path) -> None:
    """Deletes the cached builds other than ``keep`` that were last used more than :data:`STALE_DAYS` ago (each use
    touches its file): without it, every change of the sources, jaxlib or the compiler leaves one behind."""
    cutoff = time.time() - STALE_DAYS * 86400
    for old in keep.parent.glob("onednn_conv-*.so"):
        try:
            if old != keep and old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:  # gone already (another process), or not ours to delete: leave it
            pass


@functools.cache
def ensure_loaded() -> Path:
    """Build (if needed) and load the kernels, and register their FFI targets with XLA:CPU.

    Raises :class:`OneDNNUnavailable` naming what is missing. Returns the library's path."""
    path = _build()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:  # e.g. libdnnl.so removed after the build
        raise OneDNNUnavailable(f"conv_impl 'onednn': loading {path} failed: {e}; {SETUP_HINT}") from e
    for name in (*_TARGETS, *_LN_TARGETS, _MATMUL, _CAMERA):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return path


def unavailable_reason() -> str | None:
    """``None`` when the kernel is built and loaded (building it if needed), else why it cannot be."""
    try:
        ensure_loaded()
    except OneDNNUnavailable as e:
        return str(e)
    return None


def _bf16(compute_dtype: str) -> np.int64:
    """The kernels' ``bf16`` attribute: the dtype their products run in (operands of another are converted)."""
    if compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"onednn: compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
    return np.int64(compute_dtype == "bfloat16")


def _ffi(target: str, shapes: list[tuple[int, ...]], *operands: jax.Array, **attrs) -> list[jax.Array]:
    """Call one of the kernel's FFI targets; its results are float32 arrays of ``shapes``."""
    results = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]
    return jax.ffi.ffi_call(target, results, vmap_method="sequential")(*operands, **attrs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv2d_onednn(
    x: jax.Array, w: jax.Array, bias: jax.Array, stride: int, compute_dtype: str = "float32"
) -> jax.Array:
    """VALID convolution of ``x`` (B, H, W, C) with ``w`` (kh, kw, C, O) at ``stride``, plus the float32
    ``bias`` (O,), by oneDNN (the bias added inside the convolution, its gradient summed inside the weight
    gradient's).

    The product runs in ``compute_dtype`` (float32 or bfloat16; float32 or bfloat16 operands are converted by the
    kernel, not by XLA); the result is float32 ``(B, Ho, Wo, O)``; the gradients come back in the dtypes of ``x``
    and ``w``. The input gradient multiplies in ``compute_dtype``, the weight gradient in float32 (pass ``x`` in
    float32 for a float32-accurate weight gradient)."""
    ensure_loaded()
    b, h, wd, _ = x.shape
    kh, kw, _, o = w.shape
    out = (b, conv_output_size(h, kh, stride), conv_output_size(wd, kw, stride), o)
    bias = bias.astype(jnp.float32)
    return _ffi(_TARGETS[0], [out], x, w, bias, stride=np.int64(stride), bf16=_bf16(compute_dtype))[0]


def _fwd(x, w, bias, stride, compute_dtype):
    return conv2d_onednn(x, w, bias, stride, compute_dtype), (x, w, bias)


def _weight_grad(x, g, w, bias, stride):
    """The kernel's and the bias's gradients (in their dtypes) of the convolution of ``x`` with cotangent ``g``.

    Always float32 products (x as passed in, the float32 cotangent): oneDNN 2.6's bfloat16 weight-gradient kernels
    run slower than its float32 ones on the NatureCNN's shapes (conv1: 3.0 vs 1.4 ms at B = 64), and the float32
    product is the more precise one."""
    dw, db = _ffi(_TARGETS[2], [w.shape, bias.shape], x, g, stride=np.int64(stride), bf16=_bf16("float32"))
    return dw.astype(w.dtype), db.astype(bias.dtype)


def _bwd(stride, compute_dtype, res, g):
    x, w, bias = res
    (dx,) = _ffi(_TARGETS[1], [x.shape], g, w, stride=np.int64(stride), bf16=_bf16(compute_dtype))
    return dx.astype(x.dtype), *_weight_grad(x, g, w, bias, stride)


conv2d_onednn.defvjp(_fwd, _bwd)


def camera_input(camera: jax.Array, block: int, out_hw: tuple[int, int], dtype: str = "float32") -> jax.Array:
    """The uint8 camera ``(B, C, H, W)`` scaled by :func:`jtd3.agent.layout.scale_camera` and laid out channels-last,
    ``(B, Ho, Wo, block * block * C)`` in ``dtype`` (float32 or bfloat16), by one C++ pass
    (``native/camera.cc``): with ``block`` > 1 in the space-to-depth layout of
    :func:`jtd3.agent.layout.camera_to_space_to_depth` (channel ``(dy * block + dx) * C + c``); ``out_hw`` leaves out
    the rows and columns beyond ``Ho * block`` and ``Wo * block``."""
    ensure_loaded()
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"camera_input: dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    b, c, _, _ = camera.shape
    result = jax.ShapeDtypeStruct((b, *out_hw, block * block * c), jnp.dtype(dtype))
    return jax.ffi.ffi_call(_CAMERA, result, vmap_method="sequential")(
        camera, block=np.int64(block), scale=np.float32(CAMERA_SCALE), offset=np.float32(CAMERA_OFFSET))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def camera_conv_onednn(
    camera: jax.Array, w: jax.Array, bias: jax.Array, stride: int, compute_dtype: str = "float32"
) -> jax.Array:
    """The first convolution straight from the uint8 camera ``(B, C, H, W)``: :func:`conv2d_onednn` of the scaled,
    channels-last camera with ``w`` (kh, kw, C, O), ``bias`` and ``stride``, float32 ``(B, Ho, Wo, O)``.

    When the kernel is a multiple of the stride, the forward runs as the equivalent stride-1 convolution over
    the camera's space-to-depth layout (written by :func:`camera_input` in ``compute_dtype``, so the kernel
    converts nothing): with 4 input channels oneDNN's AMX kernels use a fraction of their tiles, with 64 they
    fill them. The weight gradient is taken in float32 over the plain layout, rebuilt from the camera in the
    backward (oneDNN 2.6's weight gradient runs slower over the space-to-depth one); nothing but the uint8
    camera is kept between the passes. The camera gets no gradient."""
    return _camera_conv_fwd(camera, w, bias, stride, compute_dtype)[0]


def _camera_conv_fwd(camera, w, bias, stride, compute_dtype):
    _, _, h, wd = camera.shape
    kh, kw = w.shape[:2]
    if kh % stride == 0 and kw % stride == 0:
        # what a VALID stride-1 convolution with the (kh/stride, kw/stride) kernel reads for the same output
        ho, wo = conv_output_size(h, kh, stride), conv_output_size(wd, kw, stride)
        x = camera_input(camera, stride, (ho + kh // stride - 1, wo + kw // stride - 1), compute_dtype)
        y = conv2d_onednn(x, space_to_depth_kernel(w, stride), bias, 1, compute_dtype)
    else:
        y = conv2d_onednn(camera_input(camera, 1, (h, wd), compute_dtype), w, bias, stride, compute_dtype)
    return y, (camera, w, bias)


def _camera_conv_bwd(stride, compute_dtype, res, g):
    camera, w, bias = res
    _, _, h, wd = camera.shape
    return None, *_weight_grad(camera_input(camera, 1, (h, wd), "float32"), g, w, bias, stride)


camera_conv_onednn.defvjp(_camera_conv_fwd, _camera_conv_bwd)


def _matmul(
    a: jax.Array, b: jax.Array, compute_dtype: str, trans_a: bool = False, trans_b: bool = False
) -> jax.Array:
    """``op(a) @ op(b)`` by oneDNN, multiplied in ``compute_dtype`` and returned in float32, ``op`` transposing (by
    reading the buffer column-major) when its flag is set; ``a`` and ``b`` float32 or bfloat16."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    return _ffi(_MATMUL, [(m, n)], a, b, trans_a=np.int64(trans_a), trans_b=np.int64(trans_b),
                bf16=_bf16(compute_dtype))[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_onednn(x: jax.Array, w: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """``x @ w`` for ``x`` (B, K) and ``w`` (K, N) by oneDNN's matmul: the operands in ``compute_dtype`` (float32,
    or bfloat16 on AMX), the result and the accumulation float32; both gradients the same way
    (``g @ w.T``, ``x.T @ g``, the transposes read in place)."""
    ensure_loaded()
    return _matmul(x, w, compute_dtype)


def _dense_fwd(x, w, compute_dtype):
    return dense_onednn(x, w, compute_dtype), (x, w)


def _dense_bwd(compute_dtype, res, g):
    x, w = res
    dx = _matmul(g, w, compute_dtype, trans_b=True)
    dw = _matmul(x, g, compute_dtype, trans_a=True)
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense_onednn.defvjp(_dense_fwd, _dense_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm_act(x: jax.Array, scale: jax.Array, shift: jax.Array, eps: float, slope: float) -> jax.Array:
    """``act(LayerNorm(x))`` over all axes of float32 ``x`` (B, ...) but the first, with per-element ``scale`` and
    ``shift`` of shape ``x.shape[1:]`` (Flax's ``nn.LayerNorm`` with those reduction and feature axes), and
    ``act`` the leaky ReLU of ``slope`` (0: ReLU), in one pass each way (``native/layer_norm_act.cc``)."""
    return _ln_fwd(x, scale, shift, eps, slope)[0]


def _ln_fwd(x, scale, shift, eps, slope):
    ensure_loaded()
    y, mean, rstd = _ffi(_LN_TARGETS[0], [x.shape, x.shape[:1], x.shape[:1]], x, scale, shift,
                         eps=np.float32(eps), slope=np.float32(slope))
    return y, (x, mean, rstd, scale, shift)


def _ln_bwd(eps, slope, res, g):
    x, mean, rstd, scale, shift = res
    shapes = [x.shape, scale.shape, shift.shape]  # dx, dscale, dshift
    return tuple(_ffi(_LN_TARGETS[1], shapes, x, g, mean, rstd, scale, shift, slope=np.float32(slope)))


layer_norm_act.defvjp(_ln_fwd, _ln_bwd)
