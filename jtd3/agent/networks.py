"""Flax networks: the NatureCNN encoder with a normalization switch, the actor head and the twin critic head.

Shapes and conventions:

- Camera input: uint8 ``(B, C, H, W)`` channel-first, as stored by the environment (``C`` = stacked frames,
  oldest first; the default space is ``(4, 84, 84)``). :class:`NatureCNN` scales it to [-1, 1]
  (``x / 127.5 - 1``) and transposes to NHWC.
- Convolutions use VALID padding as in PyTorch/SB3: 84 -> 20 -> 9 -> 7, flatten 7*7*64 = 3136 -> Dense.
- Normalization sits between the linear op and the activation (the seed's order).
- He (Kaiming) normal initialization for every conv/dense kernel, zero biases; except the actor's output
  layer, uniform in +-``actor_out_init`` (3e-3), so the initial policy is not saturated.
- The actor head maps ``concat(features, kinematics)`` to ``tanh`` actions in [-1, 1]; the twin critic maps
  ``concat(features, kinematics, action)`` to two Q values, shape ``(2, B)`` (an ``nn.vmap`` ensemble).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtd3.agent.conv import COMPUTE_DTYPES, CONV_IMPLS, DEFAULT_CHUNK, conv2d, conv2d_on_space_to_depth
from jtd3.agent.layout import camera_to_space_to_depth, scale_camera
from jtd3.choices import NORMS

__all__ = [
    "ACTIVATIONS",
    "CONV_LAYERS",
    "NORMS",
    "ActorHead",
    "Conv",
    "CriticHead",
    "MixedDense",
    "NatureCNN",
    "TwinCriticHead",
    "activation_fn",
    "activation_slope",
]

ACTIVATIONS = ("leaky_relu", "relu")
LEAKY_RELU_SLOPE = 0.01
LAYERNORM_EPS = 1e-5
BATCHNORM_EPS = 1e-5

CONV_LAYERS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
"""NatureCNN convolutions as ``(features, kernel, stride)``; layer names are ``conv1``..``conv3``."""

_he = nn.initializers.he_normal()
_zeros = nn.initializers.zeros_init()


def _check_choice(kind: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(map(repr, valid))}")


def activation_fn(name: str):
    """The activation function called ``name`` (one of :data:`ACTIVATIONS`)."""
    _check_choice("activation", name, ACTIVATIONS)
    if name == "relu":
        return jax.nn.relu
    return lambda x: jax.nn.leaky_relu(x, LEAKY_RELU_SLOPE)


def activation_slope(name: str) -> float:
    """The slope below 0 of the activation called ``name`` (0 for ReLU): what the fused LayerNorm kernel takes."""
    _check_choice("activation", name, ACTIVATIONS)
    return 0.0 if name == "relu" else LEAKY_RELU_SLOPE


class Conv(nn.Module):
    """VALID 2-D convolution (NHWC, HWIO kernel) through :func:`jtd3.agent.conv.conv2d`.

    With ``input_s2d`` the input is already in space-to-depth layout with block ``stride`` (see
    :func:`jtd3.agent.layout.camera_to_space_to_depth`; only for ``impl="im2col"``); with ``input_camera`` it is the
    uint8 ``(B, C, H, W)`` camera itself (only for ``impl="onednn"``, whose C++ kernel scales and lays it out,
    :func:`jtd3.agent.onednn.camera_conv_onednn`). The kernel parameter keeps its ordinary
    ``(kernel, kernel, C, features)`` shape either way, so parameters do not depend on ``impl``.
    """

    features: int
    kernel: int
    stride: int
    impl: str = "im2col"
    chunk: int = DEFAULT_CHUNK
    input_s2d: bool = False
    compute_dtype: str = "float32"  # dtype of the matmul operands; float32 parameters and results either way
    input_camera: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.input_camera and self.impl != "onednn":
            raise ValueError(f"Conv: input_camera needs impl 'onednn', got {self.impl!r}")
        if self.input_camera:
            cin = x.shape[1]
        else:
            cin = x.shape[-1] // (self.stride * self.stride) if self.input_s2d else x.shape[-1]
        kernel = self.param("kernel", _he, (self.kernel, self.kernel, cin, self.features), jnp.float32)
        bias = self.param("bias", _zeros, (self.features,), jnp.float32)
        if self.impl == "onednn":  # the bias inside the convolution; float32 x kept for the weight gradient
            from jtd3.agent.onednn import camera_conv_onednn, conv2d_onednn  # builds the C++ kernel on first use

            conv = camera_conv_onednn if self.input_camera else conv2d_onednn
            return conv(x, kernel, bias, self.stride, self.compute_dtype)
        x = x.astype(self.compute_dtype)  # before any re-layout: half the bytes to move in bfloat16
        if self.input_s2d:
            return conv2d_on_space_to_depth(x, kernel, self.stride, self.compute_dtype) + bias
        return conv2d(x, kernel, self.stride, self.impl, self.chunk, self.compute_dtype) + bias


class MixedDense(nn.Module):
    """``x @ kernel + bias`` with float32 parameters, the product's operands in ``compute_dtype`` and a float32
    result (the same parameter tree as ``nn.Dense``); by XLA, or with ``impl="onednn"`` by oneDNN's matmul."""

    features: int
    compute_dtype: str = "float32"
    impl: str = "xla"  # "onednn": the product by oneDNN's matmul (jtd3.agent.onednn.dense_onednn)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _he, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", _zeros, (self.features,), jnp.float32)
        dt = self.compute_dtype
        if self.impl == "onednn":
            from jtd3.agent.onednn import dense_onednn  # builds the C++ kernel on first use

            return dense_onednn(x, kernel, dt) + bias
        return jnp.dot(x.astype(dt), kernel.astype(dt), preferred_element_type=jnp.float32) + bias


class LayerNormAct(nn.Module):
    """``act(nn.LayerNorm(x))`` over all axes but the batch (the conv layers' LayerNorm and activation) in one
    C++ pass each way (:func:`jtd3.agent.onednn.layer_norm_act`, part of the ``onednn`` kernel): the same
    parameters as Flax's (``scale`` ones, ``bias`` zeros, shaped like one sample) and the same function."""

    activation: str = "leaky_relu"
    epsilon: float = LAYERNORM_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        from jtd3.agent.onednn import layer_norm_act  # builds the C++ kernel on first use

        slope = activation_slope(self.activation)
        scale = self.param("scale", nn.initializers.ones, x.shape[1:], jnp.float32)
        bias = self.param("bias", _zeros, x.shape[1:], jnp.float32)
        return layer_norm_act(x.astype(jnp.float32), scale, bias, self.epsilon, slope)


class NatureCNN(nn.Module):
    """Nature-DQN encoder: uint8 ``(B, C, H, W)`` -> features ``(B, features)``.

    ``norm`` is one of :data:`NORMS`, ``activation`` one of :data:`ACTIVATIONS`. ``train`` selects batch
    statistics (and updates the ``batch_stats`` collection, which must then be mutable) for BatchNorm; with
    ``train=False`` BatchNorm uses its running averages. LayerNorm behaves the same in both modes.
    The post-activation output of each conv layer is sown into the ``intermediates`` collection as
    ``conv1_out``..``conv3_out`` (collected only when that collection is mutable).
    """

    norm: str = "layernorm"
    activation: str = "leaky_relu"
    features: int = 512
    conv_impl: str = "im2col"
    conv_chunk: int = DEFAULT_CHUNK
    bn_momentum: float = 0.99
    compute_dtype: str = "float32"

    def _conv_norm_act(self, x: jax.Array, train: bool, name: str) -> jax.Array:
        """A conv layer's normalization (``norm``) and activation."""
        if self.norm == "layernorm" and self.conv_impl == "onednn":
            return LayerNormAct(self.activation, LAYERNORM_EPS, name=f"{name}_ln")(x)
        return activation_fn(self.activation)(self._conv_norm(x, train, name))

    def _conv_norm(self, x: jax.Array, train: bool, name: str) -> jax.Array:
        if self.norm == "layernorm":
            return nn.LayerNorm(
                epsilon=LAYERNORM_EPS, reduction_axes=(-3, -2, -1), feature_axes=(-3, -2, -1), name=f"{name}_ln"
            )(x)
        if self.norm in ("batchnorm", "hybrid"):
            return nn.BatchNorm(
                use_running_average=not train, momentum=self.bn_momentum, epsilon=BATCHNORM_EPS, name=f"{name}_bn"
            )(x)
        return x

    @nn.compact
    def __call__(self, camera: jax.Array, train: bool) -> jax.Array:
        _check_choice("norm", self.norm, NORMS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("conv_impl", self.conv_impl, CONV_IMPLS)
        _check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        if camera.ndim != 4:
            raise ValueError(f"NatureCNN expects camera of shape (B, C, H, W), got {camera.shape}")
        if camera.dtype != jnp.uint8:
            raise ValueError(f"NatureCNN expects a uint8 camera (0..255), got dtype {camera.dtype}")
        act = activation_fn(self.activation)
        _, k1, s1 = CONV_LAYERS[0]
        # im2col: the first conv reads a space-to-depth layout built from the uint8 data in one transpose.
        s2d = self.conv_impl == "im2col" and k1 % s1 == 0
        # onednn + bfloat16: the first conv reads the uint8 camera (scaled and laid out by its own C++ pass; in
        # float32 that pass made the encoder's forward slower at B = 256, so XLA's transpose stays there).
        from_camera = self.conv_impl == "onednn" and self.compute_dtype == "bfloat16"
        if s2d:
            x = camera_to_space_to_depth(camera, k1, s1)
        elif from_camera:
            x = camera
        else:
            x = jnp.transpose(scale_camera(camera), (0, 2, 3, 1))
        for i, (feats, kernel, stride) in enumerate(CONV_LAYERS, start=1):
            name = f"conv{i}"
            x = Conv(feats, kernel, stride, self.conv_impl, self.conv_chunk, s2d and i == 1, self.compute_dtype,
                     from_camera and i == 1, name=name)(x)
            x = self._conv_norm_act(x, train, name)
            self.sow("intermediates", f"{name}_out", x)
        x = x.reshape(x.shape[0], -1)
        dense_impl = "onednn" if self.conv_impl == "onednn" else "xla"
        x = MixedDense(self.features, self.compute_dtype, dense_impl, name="dense")(x)
        if self.norm in ("layernorm", "hybrid"):
            x = nn.LayerNorm(epsilon=LAYERNORM_EPS, name="dense_ln")(x)
        return act(x)


class _MLP(nn.Module):
    hidden: tuple[int, ...]
    out: int
    activation: str
    out_init_scale: float | None = None  # None: He; else uniform(-scale, scale) for the output kernel
    layer_norm: bool = False  # LayerNorm after every hidden Dense, before the activation

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        for i, h in enumerate(self.hidden):
            x = nn.Dense(h, kernel_init=_he, bias_init=_zeros, name=f"fc{i}")(x)
            if self.layer_norm:
                x = nn.LayerNorm(epsilon=LAYERNORM_EPS, name=f"ln{i}")(x)
            x = act(x)
        out_init = _he if self.out_init_scale is None else _symmetric_uniform(self.out_init_scale)
        return nn.Dense(self.out, kernel_init=out_init, bias_init=_zeros, name="out")(x)


def _symmetric_uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class Trunk(nn.Module):
    """``tanh(LayerNorm(Dense(dim)(features)))`` (DrQ-v2's trunk): squeezes the CNN features to ``dim`` values of
    bounded scale before they meet the kinematics and the action. Without it the action is 2 of ~530 inputs of
    the Q head's first layer, and Q(s, .) is nearly linear in the action (its maximum sits on a corner of the
    action box: bang-bang steering).
    """

    dim: int

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        x = nn.Dense(self.dim, kernel_init=_he, bias_init=_zeros, name="fc")(features)
        return jnp.tanh(nn.LayerNorm(epsilon=LAYERNORM_EPS, name="ln")(x))


class ActorHead(nn.Module):
    """Deterministic policy head: ``tanh(MLP(concat(features, kinematics)))``, shape ``(B, action_dim)``.

    The output layer's kernel is uniform in ``[-out_init_scale, out_init_scale]`` (DDPG's 3e-3), the other
    layers He: with He everywhere the initial pre-tanh outputs are of order one or more, the tanh saturates
    (a fresh actor braked at -0.9 and steered 0.8) and the actor's gradient nearly vanishes.
    """

    action_dim: int
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "leaky_relu"
    out_init_scale: float = 3e-3
    trunk_dim: int = 0  # > 0: the features pass a :class:`Trunk` of this size first

    @nn.compact
    def __call__(self, features: jax.Array, kinematics: jax.Array) -> jax.Array:
        if self.trunk_dim:
            features = Trunk(self.trunk_dim, name="trunk")(features)
        x = jnp.concatenate([features, kinematics], axis=-1)
        mlp = _MLP(tuple(self.hidden), self.action_dim, self.activation, self.out_init_scale, name="mlp")
        return jnp.tanh(mlp(x))


class CriticHead(nn.Module):
    """One Q head: ``MLP(concat(features, kinematics, action))`` -> ``(B,)``.

    ``layer_norm``: LayerNorm after each hidden layer (RLPD, Ball et al. 2023): it bounds how far the Q head
    extrapolates to actions the replay never holds, where a plain ReLU MLP grows linearly and the actor follows
    it to the bounds of the action box.
    """

    hidden: tuple[int, ...] = (256, 256)
    activation: str = "leaky_relu"
    layer_norm: bool = False
    trunk_dim: int = 0  # > 0: the features pass a :class:`Trunk` of this size first

    @nn.compact
    def __call__(self, features: jax.Array, kinematics: jax.Array, action: jax.Array) -> jax.Array:
        if self.trunk_dim:
            features = Trunk(self.trunk_dim, name="trunk")(features)
        x = jnp.concatenate([features, kinematics, action], axis=-1)
        return _MLP(tuple(self.hidden), 1, self.activation, layer_norm=self.layer_norm, name="mlp")(x)[..., 0]


class TwinCriticHead(nn.Module):
    """Two independent :class:`CriticHead` s (``nn.vmap`` over a leading parameter axis): ``(2, B)``."""

    hidden: tuple[int, ...] = (256, 256)
    activation: str = "leaky_relu"
    num_heads: int = 2
    layer_norm: bool = False
    trunk_dim: int = 0

    @nn.compact
    def __call__(self, features: jax.Array, kinematics: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            CriticHead,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_heads,
        )
        return ensemble(tuple(self.hidden), self.activation, self.layer_norm, self.trunk_dim, name="q")(features, kinematics, action)
