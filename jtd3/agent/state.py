"""The TD3 train state and its construction (:func:`create`).

The state is two :class:`NetState` (``actor`` and ``critic``, after SBX's ``RLTrainState``): each is a
``flax.training.train_state.TrainState`` (online ``params``, optimiser ``tx`` and ``opt_state``, ``step`` = the
updates that side has had) that also carries its target parameters and BatchNorm statistics. Their trees
(``encoder`` = NatureCNN, ``head`` = MLP):

===============================  ============================  ============================  ============================
field                            ``encoder: separate``         ``encoder: shared``           ``encoder: original``
===============================  ============================  ============================  ============================
``actor.params``                 ``{"encoder", "head"}``       ``{"head"}``                  ``{"encoder", "head"}``
``critic.params``                ``{"encoder", "head"}``       ``{"encoder", "head"}``       ``{"encoder", "head"}``
``*.target_params``              same structure as online      same structure as online      ``{"head"}`` (no target CNN)
``actor.batch_stats``            ``{"encoder": batch_stats}``  ``{}``                        ``{"encoder": batch_stats}``
``critic.batch_stats``           ``{"encoder": batch_stats}``  ``{"encoder": batch_stats}``  ``{"encoder": batch_stats}``
``*.target_batch_stats``         same structure as online      same structure as online      ``{}``
===============================  ============================  ============================  ============================

In ``shared`` mode the critic's encoder is the only one; the actor reads its features.

``batch_stats`` hold BatchNorm running averages (``{}`` inside when the norm has no BatchNorm). The state's
array leaves form a plain pytree (dicts, optax named tuples, arrays) that orbax saves and restores exactly;
the configuration, sizes and optimisers are static (non-pytree) fields, so ``jax.jit`` recompiles when they
change and a checkpoint restores into any freshly :func:`create` d state of the same configuration. Optimisers
are built once per (spec, side) (:func:`optimizer`), so equal configurations share compiled code.

Checkpoints written before this layout (format 1: one flat struct, ``actor_params``, ``critic_opt_state``, ...)
are read through :func:`to_flat_v1` / :func:`from_flat_v1`.
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
from flax.training import train_state
from gymnasium import spaces

from jtd3.agent.config import AgentConfig
from jtd3.agent.networks import ActorHead, NatureCNN, TwinCriticHead

__all__ = [
    "OPTIMIZER_SIDES", "AgentSpec", "Modules", "NetState", "TrainState", "create", "from_flat_v1", "make_optimizer",
    "modules", "optimizer", "resolve_conv_impl", "to_flat_v1",
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
    """Resolved convolution implementation ('im2col', 'xla' or 'onednn'; config 'auto' resolved at create time)."""

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


class NetState(train_state.TrainState):
    """One side of TD3 (actor or critic). From flax's ``TrainState``: ``params`` (online), ``tx`` and
    ``opt_state`` (its optimiser, :func:`optimizer`), ``step`` (int32: gradient steps this side has taken) and
    ``apply_gradients``; ``apply_fn`` is unused (None: encoder and head are separate modules, :func:`modules`)."""

    target_params: Any
    batch_stats: Any
    """BatchNorm running averages of the online encoder: ``{"encoder": ...}`` or ``{}`` (no encoder)."""
    target_batch_stats: Any

    def soft_update(self, tau: float, stats_mode: str) -> NetState:
        """Polyak targets: ``target <- tau * online + (1 - tau) * target`` over the target tree (all of it, or
        the head only where there is no target encoder); BatchNorm stats ``copy`` or ``polyak`` likewise."""
        online = {k: self.params[k] for k in self.target_params}
        stats = {k: self.batch_stats[k] for k in self.target_batch_stats}
        if stats_mode == "copy":
            new_stats = jax.tree.map(jnp.copy, stats)
        elif stats_mode == "polyak":
            new_stats = optax.incremental_update(stats, self.target_batch_stats, tau)
        else:
            raise ValueError(f"unknown target_bn_stats {stats_mode!r}; valid choices: 'polyak', 'copy'")
        return self.replace(
            target_params=optax.incremental_update(online, self.target_params, tau), target_batch_stats=new_stats
        )


@struct.dataclass
class TrainState:
    """Everything TD3 learns or counts. See the module docstring for the tree layout."""

    actor: NetState
    critic: NetState
    key: jax.Array
    """uint32 raw PRNG key data (``jax.random.key_data``); wrap with ``jax.random.wrap_key_data``."""
    spec: AgentSpec = struct.field(pytree_node=False)

    @property
    def step(self) -> jax.Array:
        """int32 scalar: updates done so far (critic steps). The update with index ``step`` (0-based) is a
        policy step (actor + targets) when ``(step + 1) % policy_delay == 0``."""
        return self.critic.step


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
    """'auto' -> 'xla' on GPU/TPU (cuDNN convolutions), 'im2col' on CPU; other values pass through, and 'onednn'
    (CPU only) is refused on another backend."""
    backend = jax.default_backend() if backend is None else backend
    if conv_impl == "onednn" and backend != "cpu":
        raise ValueError(f"agent.conv_impl 'onednn' runs on the CPU only; this process's JAX backend is {backend!r} "
                         "(use 'auto' or 'xla')")
    if conv_impl != "auto":
        return conv_impl
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


def _labels(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, _: _label(p), params)


def _kernel_mask(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, _: getattr(p[-1], "key", None) == "kernel", params)


OPTIMIZER_SIDES = ("actor", "critic")


def make_optimizer(config: AgentConfig, side: str, with_encoder: bool = True) -> optax.GradientTransformation:
    """The optimiser of one side (``"actor"`` or ``"critic"``); its parameter tree has ``head`` and, when
    ``with_encoder``, ``encoder``.

    In order: the side's whole gradient (CNN and MLP together) is clipped to ``actor_grad_clip`` /
    ``critic_grad_clip`` (global norm; the original's ``clip_grad_norm_`` per side); then each part (the
    ``encoder`` subtree and the rest) is clipped to ``cnn_grad_clip`` / ``mlp_grad_clip``; then Adam with
    ``cnn_lr`` / ``mlp_lr``. Weight decay (``weight_decay > 0``): ``decoupled`` is AdamW on conv/dense
    kernels only; ``coupled`` is PyTorch's ``Adam(weight_decay=wd)``: ``wd * param`` is added to the clipped
    gradient of every parameter (biases and norm scales too) before Adam's moments.
    """
    if side not in OPTIMIZER_SIDES:
        raise ValueError(f"unknown optimiser side {side!r}; valid choices: 'actor', 'critic'")
    settings = {"cnn": (config.cnn_lr, config.cnn_grad_clip), "mlp": (config.mlp_lr, config.mlp_grad_clip)}
    if not with_encoder:
        del settings["cnn"]
    weight_decay, mode = config.weight_decay, config.weight_decay_mode
    side_clip = config.actor_grad_clip if side == "actor" else config.critic_grad_clip
    transforms = {}
    for name, (lr, clip) in settings.items():
        if weight_decay > 0.0 and mode == "coupled":
            opt = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))
        elif weight_decay > 0.0:
            opt = optax.adamw(lr, weight_decay=weight_decay, mask=_kernel_mask)
        else:
            opt = optax.adam(lr)
        transforms[name] = opt if clip is None else optax.chain(optax.clip_by_global_norm(clip), opt)
    opt = optax.multi_transform(transforms, _labels)
    return opt if side_clip is None else optax.chain(optax.clip_by_global_norm(side_clip), opt)


@functools.lru_cache(maxsize=None)
def optimizer(spec: AgentSpec, side: str) -> optax.GradientTransformation:
    """:func:`make_optimizer` for one side of ``spec``, built once: the optimiser is a static field of the
    state, compared by identity when ``jax.jit`` looks up compiled code."""
    return make_optimizer(spec.config, side, with_encoder=side == "critic" or spec.separate)


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
    copy = functools.partial(jax.tree.map, jnp.copy)

    def side(name: str, params: Any, stats: Any) -> NetState:
        tx = optimizer(spec, name)
        if spec.original:  # the original had target copies of the MLP heads only
            target, target_stats = {"head": copy(params["head"])}, {}
        else:
            target, target_stats = copy(params), copy(stats)
        return NetState(
            step=jnp.zeros((), jnp.int32), apply_fn=None, params=params, tx=tx, opt_state=tx.init(params),
            target_params=target, batch_stats=stats, target_batch_stats=target_stats,
        )

    return TrainState(
        actor=side("actor", actor_params, actor_stats),
        critic=side("critic", critic_params, critic_stats),
        key=jax.random.key_data(key),
        spec=spec,
    )


_V1_FIELDS = {  # format-1 field -> (side, NetState field)
    "actor_params": ("actor", "params"),
    "critic_params": ("critic", "params"),
    "actor_target_params": ("actor", "target_params"),
    "critic_target_params": ("critic", "target_params"),
    "actor_stats": ("actor", "batch_stats"),
    "critic_stats": ("critic", "batch_stats"),
    "actor_target_stats": ("actor", "target_batch_stats"),
    "critic_target_stats": ("critic", "target_batch_stats"),
    "actor_opt_state": ("actor", "opt_state"),
    "critic_opt_state": ("critic", "opt_state"),
}


def to_flat_v1(state: TrainState) -> dict[str, Any]:
    """The state in the format-1 checkpoint layout (one flat struct: ``step``, ``actor_params``, ...,
    ``critic_opt_state``, ``key``): a template to read such a checkpoint with."""
    flat = {name: getattr(getattr(state, side), field) for name, (side, field) in _V1_FIELDS.items()}
    return {"step": state.critic.step, **flat, "key": state.key}


def from_flat_v1(template: TrainState, flat: dict[str, Any]) -> TrainState:
    """A :class:`TrainState` from a format-1 tree (:func:`to_flat_v1`'s layout); optimisers and spec come from
    ``template``. Format 1 counted critic updates only; the actor's count is derived from the policy delay."""
    fields: dict[str, dict[str, Any]] = {"actor": {}, "critic": {}}
    for name, (side, field) in _V1_FIELDS.items():
        fields[side][field] = flat[name]
    step = jnp.asarray(flat["step"], jnp.int32)
    actor_steps = step // template.spec.config.policy_delay
    return template.replace(
        actor=template.actor.replace(step=actor_steps, **fields["actor"]),
        critic=template.critic.replace(step=step, **fields["critic"]),
        key=flat["key"],
    )
