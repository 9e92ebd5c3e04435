"""The TD3 train state and its construction (:func:`create`).

Layout of the parameter trees (``encoder`` = NatureCNN, ``head`` = MLP):

=====================  ============================  ============================  ============================
tree                   ``encoder: separate``         ``encoder: shared``           ``encoder: original``
=====================  ============================  ============================  ============================
``actor_params``       ``{"encoder", "head"}``       ``{"head"}``                  ``{"encoder", "head"}``
``critic_params``      ``{"encoder", "head"}``       ``{"encoder", "head"}``       ``{"encoder", "head"}``
``*_target_params``    same structure as online      same structure as online      ``{"head"}`` (no target CNN)
``actor_stats``        ``{"encoder": batch_stats}``  ``{}``                        ``{"encoder": batch_stats}``
``critic_stats``       ``{"encoder": batch_stats}``  ``{"encoder": batch_stats}``  ``{"encoder": batch_stats}``
``*_target_stats``     same structure as online      same structure as online      ``{}``
=====================  ============================  ============================  ============================

In ``shared`` mode the critic's encoder is the only one; the actor reads its features.

``*_stats`` hold BatchNorm running averages (``{}`` inside when the norm has no BatchNorm). The state's
array leaves form a plain pytree (dicts, optax named tuples, arrays) that orbax saves and restores exactly;
the configuration and sizes are a static (non-pytree) field, so ``jax.jit`` recompiles when they change
and a checkpoint restores into any freshly :func:`create` d state of the same configuration.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from gymnasium import spaces

from jtd3.agent.config import AgentConfig
from jtd3.agent.networks import ActorHead, NatureCNN, TwinCriticHead

__all__ = [
    "OPTIMIZER_SIDES", "AgentSpec", "Modules", "TrainState", "create", "make_optimizer", "modules", "resolve_conv_impl",
]


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """Static description of an agent: config plus the sizes derived from the spaces (hashable)."""

    config: AgentConfig
    camera_shape: tuple[int, int, int]
    """(frames, H, W) of the uint8 camera stack."""
    kinematics_dim: int
    action_dim: int
    conv_impl: str
    """Resolved convolution implementation ('im2col' or 'xla'; config 'auto' resolved at create time)."""

    @property
    def uses_batchnorm(self) -> bool:
        return self.config.norm in ("batchnorm", "hybrid")

    @property
    def separate(self) -> bool:
        """The actor owns a NatureCNN (``separate`` and ``original``)."""
        return self.config.encoder in ("separate", "original")

    @property
    def original(self) -> bool:
        """The PyTorch original's wiring: Q1 on actor-encoder features in the actor loss, no target encoders."""
        return self.config.encoder == "original"


@struct.dataclass
class TrainState:
    """Everything TD3 learns or counts. See the module docstring for the tree layout."""

    step: jax.Array
    """int32 scalar: critic updates done so far. The update with index ``step`` (0-based) is a policy
    step (actor + targets) when ``(step + 1) % policy_delay == 0``."""
    actor_params: Any
    critic_params: Any
    actor_target_params: Any
    critic_target_params: Any
    actor_stats: Any
    critic_stats: Any
    actor_target_stats: Any
    critic_target_stats: Any
    actor_opt_state: Any
    critic_opt_state: Any
    key: jax.Array
    """uint32 raw PRNG key data (``jax.random.key_data``); wrap with ``jax.random.wrap_key_data``."""
    spec: AgentSpec = struct.field(pytree_node=False)


class Modules(NamedTuple):
    """The Flax modules of an agent (stateless descriptions; parameters live in the train state)."""

    encoder: NatureCNN
    actor_head: ActorHead
    critic_head: TwinCriticHead


@functools.lru_cache(maxsize=None)
def modules(spec: AgentSpec) -> Modules:
    """Build the Flax modules for ``spec`` (actor and critic encoders share the architecture)."""
    c = spec.config
    encoder = NatureCNN(
        norm=c.norm,
        activation=c.activation,
        features=c.features_dim,
        conv_impl=spec.conv_impl,
        conv_chunk=c.conv_chunk,
        bn_momentum=c.bn_momentum,
        compute_dtype=c.compute_dtype,
    )
    actor_head = ActorHead(
        action_dim=spec.action_dim, hidden=tuple(c.actor_hidden), activation=c.activation,
        out_init_scale=c.actor_out_init, trunk_dim=c.trunk_dim,
    )
    critic_head = TwinCriticHead(
        hidden=tuple(c.critic_hidden), activation=c.activation, layer_norm=c.critic_layernorm, trunk_dim=c.trunk_dim
    )
    return Modules(encoder, actor_head, critic_head)


def resolve_conv_impl(conv_impl: str, backend: str | None = None) -> str:
    """'auto' -> 'xla' on GPU/TPU (cuDNN convolutions), 'im2col' on CPU; other values pass through."""
    if conv_impl != "auto":
        return conv_impl
    backend = jax.default_backend() if backend is None else backend
    return "im2col" if backend == "cpu" else "xla"


def _space_sizes(observation_space: spaces.Space, action_space: spaces.Space) -> tuple[tuple[int, ...], int, int]:
    if not isinstance(observation_space, spaces.Dict):
        raise ValueError(
            f"observation_space must be a gymnasium spaces.Dict with 'camera' and 'kinematics', "
            f"got {observation_space!r}"
        )
    missing = {"camera", "kinematics"} - set(observation_space.spaces)
    if missing:
        raise ValueError(
            f"observation_space lacks {sorted(missing)}; expected keys 'camera' (uint8 (frames, H, W)) and "
            f"'kinematics' (float32 (K,)), got {sorted(observation_space.spaces)}"
        )
    cam, kin = observation_space["camera"], observation_space["kinematics"]
    if not isinstance(cam, spaces.Box) or cam.dtype != np.uint8 or len(cam.shape) != 3:
        raise ValueError(f"observation_space['camera'] must be a uint8 Box of shape (frames, H, W), got {cam!r}")
    if not isinstance(kin, spaces.Box) or len(kin.shape) != 1:
        raise ValueError(f"observation_space['kinematics'] must be a Box of shape (K,), got {kin!r}")
    if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(f"action_space must be a Box of shape (A,), got {action_space!r}")
    if not (np.all(action_space.low == -1.0) and np.all(action_space.high == 1.0)):
        raise ValueError(
            f"action_space must be bounded by [-1, 1] (the actor ends in tanh), got low={action_space.low}, "
            f"high={action_space.high}"
        )
    return tuple(int(s) for s in cam.shape), int(kin.shape[0]), int(action_space.shape[0])


def _label(path: tuple[Any, ...]) -> str:
    return "cnn" if getattr(path[0], "key", None) == "encoder" else "mlp"


def _kernel_mask(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, _: getattr(p[-1], "key", None) == "kernel", params)


OPTIMIZER_SIDES = ("actor", "critic")


def make_optimizer(config: AgentConfig, params: Any, side: str) -> optax.GradientTransformation:
    """The optimiser of one side (``"actor"`` or ``"critic"``) over its parameter tree ``params``.

    In order: the side's whole gradient (CNN and MLP together) is clipped to ``actor_grad_clip`` /
    ``critic_grad_clip`` (global norm; the original's ``clip_grad_norm_`` per side); then each part (the
    ``encoder`` subtree and the rest) is clipped to ``cnn_grad_clip`` / ``mlp_grad_clip``; then Adam with
    ``cnn_lr`` / ``mlp_lr``. Weight decay (``weight_decay > 0``): ``decoupled`` is AdamW on conv/dense
    kernels only; ``coupled`` is PyTorch's ``Adam(weight_decay=wd)``: ``wd * param`` is added to the clipped
    gradient of every parameter (biases and norm scales too) before Adam's moments.
    """
    if side not in OPTIMIZER_SIDES:
        raise ValueError(f"unknown optimiser side {side!r}; valid choices: 'actor', 'critic'")
    labels = jax.tree_util.tree_map_with_path(lambda p, _: _label(p), params)
    present = set(jax.tree.leaves(labels))
    settings = {"cnn": (config.cnn_lr, config.cnn_grad_clip), "mlp": (config.mlp_lr, config.mlp_grad_clip)}
    weight_decay, mode = config.weight_decay, config.weight_decay_mode
    side_clip = config.actor_grad_clip if side == "actor" else config.critic_grad_clip
    transforms = {}
    for name, (lr, clip) in settings.items():
        if name not in present:
            continue
        if weight_decay > 0.0 and mode == "coupled":
            opt = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))
        elif weight_decay > 0.0:
            opt = optax.adamw(lr, weight_decay=weight_decay, mask=_kernel_mask)
        else:
            opt = optax.adam(lr)
        transforms[name] = opt if clip is None else optax.chain(optax.clip_by_global_norm(clip), opt)
    opt = optax.multi_transform(transforms, labels)
    return opt if side_clip is None else optax.chain(optax.clip_by_global_norm(side_clip), opt)


def create(config: AgentConfig, observation_space: spaces.Space, action_space: spaces.Space, seed: int) -> TrainState:
    """A fresh train state: He-initialised networks, targets equal to the online networks, Adam states.

    ``observation_space``: ``spaces.Dict(camera=Box(uint8, (frames, H, W)), kinematics=Box((K,)))``;
    ``action_space``: ``Box(-1, 1, (A,))``. All input sizes are taken from the spaces.
    """
    if not isinstance(config, AgentConfig):
        raise ValueError(f"config must be an AgentConfig, got {type(config).__name__}")
    camera_shape, kin_dim, action_dim = _space_sizes(observation_space, action_space)
    spec = AgentSpec(
        config=config,
        camera_shape=camera_shape,
        kinematics_dim=kin_dim,
        action_dim=action_dim,
        conv_impl=resolve_conv_impl(config.conv_impl),
    )
    mods = modules(spec)
    key = jax.random.key(seed)
    key, k_actor_enc, k_critic_enc, k_actor_head, k_critic_head = jax.random.split(key, 5)
    camera = jnp.zeros((1, *camera_shape), jnp.uint8)
    kin = jnp.zeros((1, kin_dim), jnp.float32)
    act = jnp.zeros((1, action_dim), jnp.float32)
    feats = jnp.zeros((1, config.features_dim), jnp.float32)

    def init_encoder(k: jax.Array) -> tuple[Any, Any]:
        variables = mods.encoder.init(k, camera, train=False)
        return variables["params"], dict(variables.get("batch_stats", {}))

    critic_enc, critic_enc_stats = init_encoder(k_critic_enc)
    critic_params = {"encoder": critic_enc, "head": mods.critic_head.init(k_critic_head, feats, kin, act)["params"]}
    actor_params = {"head": mods.actor_head.init(k_actor_head, feats, kin)["params"]}
    critic_stats = {"encoder": critic_enc_stats}
    actor_stats: dict[str, Any] = {}
    if spec.separate:
        actor_enc, actor_enc_stats = init_encoder(k_actor_enc)
        actor_params = {"encoder": actor_enc, **actor_params}
        actor_stats = {"encoder": actor_enc_stats}
    actor_params = nn.unbox(actor_params)
    critic_params = nn.unbox(critic_params)
    actor_opt = make_optimizer(config, actor_params, "actor")
    critic_opt = make_optimizer(config, critic_params, "critic")
    copy = functools.partial(jax.tree.map, jnp.copy)
    if spec.original:  # the original had target copies of the MLP heads only
        actor_target, critic_target = {"head": copy(actor_params["head"])}, {"head": copy(critic_params["head"])}
        actor_target_stats, critic_target_stats = {}, {}
    else:
        actor_target, critic_target = copy(actor_params), copy(critic_params)
        actor_target_stats, critic_target_stats = copy(actor_stats), copy(critic_stats)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        actor_params=actor_params,
        critic_params=critic_params,
        actor_target_params=actor_target,
        critic_target_params=critic_target,
        actor_stats=actor_stats,
        critic_stats=critic_stats,
        actor_target_stats=actor_target_stats,
        critic_target_stats=critic_target_stats,
        actor_opt_state=actor_opt.init(actor_params),
        critic_opt_state=critic_opt.init(critic_params),
        key=jax.random.key_data(key),
        spec=spec,
    )
