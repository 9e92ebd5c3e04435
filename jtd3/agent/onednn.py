"""Convolutions and LayerNorm through oneDNN on the CPU (``agent.conv_impl: onednn``), called with the XLA FFI.

oneDNN runs the convolutions directly on the NHWC activations (no patch matrix, no re-layout by XLA) and, with
``compute_dtype: bfloat16``, on the AMX units of the CPUs that have them; the conv layers' LayerNorm
(:func:`layer_norm_onednn`, used by ``networks.OneDNNLayerNorm``) runs as one oneDNN pass each way. The kernel is C++
(``native/onednn_conv.cc``); it is compiled on first use with the system C++ compiler against oneDNN's
headers and library and jaxlib's FFI headers, and cached under ``$XDG_CACHE_HOME/jtd3/native`` (default
``~/.cache``) by a hash of the source, the jaxlib version, the compiler and its command line (the compiler
also reads ``CPATH`` and ``LIBRARY_PATH`` for a oneDNN outside the system paths). It needs ``g++`` and oneDNN 2.x
(Debian/Ubuntu: ``apt-get install g++ libdnnl-dev``); without them asking for ``onednn`` fails with a message
that says so: there is no silent fallback, and ``im2col`` (the default) needs nothing of this.

:func:`conv2d_onednn` is a VALID convolution with a custom VJP: forward, input gradient and weight gradient
are one oneDNN primitive each; all three return float32 (float32 accumulation in bfloat16 too).
:func:`layer_norm_onednn` has a custom VJP too (oneDNN's forward and backward; float32), and so has
:func:`dense_onednn` (the encoder's dense layer as oneDNN matmuls: at B = 64 its float32 products run at 220-310
GFLOP/s where XLA's reach 160-195, and in bfloat16 they run on AMX and return float32, with no conversion of the
weight gradient afterwards).
``tests/test_onednn.py`` checks them against ``lax.conv_general_dilated`` and Flax's ``nn.LayerNorm``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

__all__ = [
    "OneDNNUnavailable", "conv2d_onednn", "dense_onednn", "ensure_loaded", "layer_norm_onednn", "unavailable_reason",
]

_SOURCE = Path(__file__).with_name("native") / "onednn_conv.cc"
_TARGETS = ("jtd3_onednn_conv_fwd", "jtd3_onednn_conv_bwd_data", "jtd3_onednn_conv_bwd_w")
_LN_TARGETS = ("jtd3_onednn_ln_fwd", "jtd3_onednn_ln_bwd")
_MATMUL = "jtd3_onednn_matmul"
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
    cmd = [cxx, "-O2", "-w", "-std=c++17", "-shared", "-fPIC", f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-ldnnl"]
    key = _SOURCE.read_bytes() + f"{jaxlib.__version__}\n{version}\n{cmd}".encode()
    out = _cache_dir() / f"onednn_conv-{hashlib.sha256(key).hexdigest()[:16]}.so"
    if out.exists():
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
                f"conv_impl 'onednn': compiling {_SOURCE.name} failed ({' '.join(cmd)}); {SETUP_HINT}.\n"
                + done.stderr[-2000:]
            )
        os.replace(tmp_path, out)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out


@functools.cache
def ensure_loaded() -> Path:
    """Build (if needed) and load the kernel, and register its FFI targets (convolution, LayerNorm) with XLA:CPU.

    Raises :class:`OneDNNUnavailable` naming what is missing. Returns the library's path."""
    path = _build()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:  # e.g. libdnnl.so removed after the build
        raise OneDNNUnavailable(f"conv_impl 'onednn': loading {path} failed: {e}; {SETUP_HINT}") from e
    for name in (*_TARGETS, *_LN_TARGETS, _MATMUL):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return path


def unavailable_reason() -> str | None:
    """``None`` when the kernel is built and loaded (building it if needed), else why it cannot be."""
    try:
        ensure_loaded()
    except OneDNNUnavailable as e:
        return str(e)
    return None


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

    The operands are cast to ``compute_dtype`` (float32 or bfloat16); the result is float32
    ``(B, Ho, Wo, O)``; the gradients come back in the dtypes of ``x`` and ``w``. The input gradient multiplies in
    ``compute_dtype``, the weight gradient in float32 (pass ``x`` in float32 for a float32 weight gradient)."""
    ensure_loaded()
    b, h, wd, _ = x.shape
    kh, kw, _, o = w.shape
    out = (b, (h - kh) // stride + 1, (wd - kw) // stride + 1, o)
    x, w = x.astype(compute_dtype), w.astype(compute_dtype)
    return _ffi(_TARGETS[0], [out], x, w, bias.astype(jnp.float32), stride=np.int64(stride))[0]


def _fwd(x, w, bias, stride, compute_dtype):
    return conv2d_onednn(x, w, bias, stride, compute_dtype), (x, w, bias)


def _bwd(stride, compute_dtype, res, g):
    x, w, bias = res
    (dx,) = _ffi(_TARGETS[1], [x.shape], g.astype(compute_dtype), w.astype(compute_dtype), stride=np.int64(stride))
    # The weight gradient always multiplies float32 operands (x as passed in, the float32 cotangent): oneDNN 2.6's
    # bfloat16 weight-gradient kernels run slower than its float32 ones on the NatureCNN's shapes (conv1: 3.0 vs
    # 1.4 ms at B = 64), and the float32 product is the more precise one.
    dw, db = _ffi(_TARGETS[2], [w.shape, bias.shape], x.astype(jnp.float32), g.astype(jnp.float32),
                  stride=np.int64(stride))
    return dx.astype(x.dtype), dw.astype(w.dtype), db.astype(bias.dtype)


conv2d_onednn.defvjp(_fwd, _bwd)


def _matmul(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False) -> jax.Array:
    """``op(a) @ op(b)`` in float32 by oneDNN, ``op`` transposing (by reading the buffer column-major) when
    its flag is set; ``a`` and ``b`` float32 or bfloat16, of one dtype."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    return _ffi(_MATMUL, [(m, n)], a, b, trans_a=np.int64(trans_a), trans_b=np.int64(trans_b))[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_onednn(x: jax.Array, w: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """``x @ w`` for ``x`` (B, K) and ``w`` (K, N) by oneDNN's matmul: the operands in ``compute_dtype`` (float32,
    or bfloat16 on AMX), the result and the accumulation float32; both gradients the same way
    (``g @ w.T``, ``x.T @ g``, the transposes read in place)."""
    ensure_loaded()
    return _matmul(x.astype(compute_dtype), w.astype(compute_dtype))


def _dense_fwd(x, w, compute_dtype):
    return dense_onednn(x, w, compute_dtype), (x, w)


def _dense_bwd(compute_dtype, res, g):
    x, w = res
    g = g.astype(compute_dtype)
    dx = _matmul(g, w.astype(compute_dtype), trans_b=True)
    dw = _matmul(x.astype(compute_dtype), g, trans_a=True)
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense_onednn.defvjp(_dense_fwd, _dense_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm_onednn(x: jax.Array, scale: jax.Array, shift: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over all axes of float32 ``x`` (B, ...) but the first, with per-element ``scale`` and ``shift``
    of shape ``x.shape[1:]`` (Flax's ``nn.LayerNorm`` with those reduction and feature axes), by oneDNN."""
    return _ln_fwd(x, scale, shift, eps)[0]


def _ln_fwd(x, scale, shift, eps):
    ensure_loaded()
    y, mean, var = _ffi(_LN_TARGETS[0], [x.shape, x.shape[:1], x.shape[:1]], x, scale, shift, eps=np.float32(eps))
    return y, (x, mean, var, scale, shift)


def _ln_bwd(eps, res, g):
    x, mean, var, scale, shift = res
    shapes = [x.shape, scale.shape, shift.shape]  # dx, dscale, dshift
    return tuple(_ffi(_LN_TARGETS[1], shapes, x, g, mean, var, scale, shift, eps=np.float32(eps)))


layer_norm_onednn.defvjp(_ln_fwd, _ln_bwd)
