"""Every setting of the TD3 agent, as a frozen (hashable) config dataclass.

The whole config is a static part of the train state (it selects network shapes and control flow), so a
changed value means a new ``jax.jit`` compilation, never a silently ignored key. ``tests/test_agent*.py``
prove that every field is read by the code (``jtd3.config.track_reads``).
"""

from __future__ import annotations

import dataclasses

from jtd3.agent.conv import COMPUTE_DTYPES, DEFAULT_CHUNK
from jtd3.agent.networks import ACTIVATIONS
from jtd3.choices import ENCODERS, NORMS
from jtd3.config import ConfigNode, check, choice, param

__all__ = ["AgentConfig", "CONV_IMPL_CHOICES", "ENCODERS", "TARGET_BN_STATS", "WEIGHT_DECAY_MODES"]

TARGET_BN_STATS = ("polyak", "copy")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")
CONV_IMPL_CHOICES = ("auto", "im2col", "xla", "onednn")


@dataclasses.dataclass(frozen=True)
class AgentConfig(ConfigNode):
    """TD3 agent settings (networks, TD3 constants, optimisers, diagnostics)."""

    # --- networks
    norm: str = choice("layernorm", NORMS, "normalization in the NatureCNN encoders (see jtd3.choices.NORMS)")
    activation: str = choice("leaky_relu", ACTIVATIONS, "activation everywhere (leaky slope 0.01)")
    encoder: str = choice(
        "shared",
        ENCODERS,
        "shared (default, DrQ style): one critic-owned encoder, the actor reads stop_gradient(features); half "
        "the encoder passes of separate per update (docs/agent.md has the speeds). separate: actor and critic "
        "own a NatureCNN each, the actor's learns only through the action. original: the PyTorch original's "
        "wiring, kept to reproduce its failure (Q1 scored on the actor encoder's features, gradients into the actor "
        "encoder through Q1's state input; no target encoders: the TD target uses the online critic encoder with "
        "the target heads)",
    )
    features_dim: int = param(512, "NatureCNN output size")
    actor_hidden: tuple[int, ...] = param((256, 256), "actor MLP hidden sizes")
    actor_out_init: float = param(
        3e-3, "the actor's output kernel starts uniform in [-x, x] (other layers: He), so tanh starts unsaturated"
    )
    critic_hidden: tuple[int, ...] = param((256, 256), "critic MLP hidden sizes (each of the two Q heads)")
    critic_layernorm: bool = param(
        True, "LayerNorm after each hidden layer of the Q heads (RLPD): bounds the Q heads' extrapolation to actions "
        "the replay lacks (without it the actor saturated its steering at -1 and learned to stop)"
    )
    trunk_dim: int = param(
        50, "> 0: each head (the actor, each Q head) first maps the CNN features through Dense(trunk_dim) + LayerNorm "
        "+ tanh (DrQ-v2's trunk), so that the action is not 2 of ~570 inputs of the Q head (without it Q was nearly "
        "linear in the action and the policy bang-bang, docs/learning.md); 0: the features go in as they are"
    )
    # --- TD3
    gamma: float = param(0.99, "discount per environment step")
    n_step: int = param(
        1, "n-step TD targets (DrQ-v2 uses 3): the replay sums up to n rewards of an episode, discounted, and the "
        "target bootstraps with gamma^m after the m steps taken (fewer at an episode's end)"
    )
    tau: float = param(0.005, "Polyak rate of the target networks: target <- tau*online + (1-tau)*target")
    policy_noise: float = param(0.2, "std of the target policy smoothing noise (action units)")
    noise_clip: float = param(0.5, "target policy smoothing noise is clipped to [-noise_clip, noise_clip]")
    policy_delay: int = param(2, "actor and target updates every policy_delay-th critic update")
    # --- optimisers (Adam, separate learning rates for CNN and MLP parameters)
    cnn_lr: float = param(1e-4, "Adam learning rate of encoder (CNN) parameters")
    mlp_lr: float = param(3e-4, "Adam learning rate of head (MLP) parameters")
    cnn_grad_clip: float | None = param(
        None, "clip the CNN gradients (per optimiser: actor / critic) to this global norm; null = off"
    )
    mlp_grad_clip: float | None = param(
        None, "clip the MLP gradients (per optimiser: actor / critic) to this global norm; null = off"
    )
    actor_grad_clip: float | None = param(
        None, "clip the actor's whole gradient (CNN and MLP together) to this global norm first; null = off"
    )
    critic_grad_clip: float | None = param(
        None, "clip the critic's whole gradient (CNN and MLP together) to this global norm first; null = off"
    )
    weight_decay: float = param(0.0, "weight decay rate (see weight_decay_mode); 0 = plain Adam")
    weight_decay_mode: str = choice(
        "decoupled",
        WEIGHT_DECAY_MODES,
        "decoupled: AdamW, decay on conv/dense kernels only; coupled: PyTorch Adam(weight_decay=...), L2 term "
        "weight_decay * param added to the (clipped) gradient of every parameter before Adam",
    )
    # --- BatchNorm (norm = batchnorm | hybrid)
    bn_momentum: float = param(0.99, "running-average decay of BatchNorm stats (Flax convention; PyTorch 0.1)")
    target_bn_stats: str = choice(
        "polyak",
        TARGET_BN_STATS,
        "how target networks' BatchNorm running stats follow the online ones at each target update",
    )
    # --- implementation and diagnostics
    conv_impl: str = choice(
        "auto",
        CONV_IMPL_CHOICES,
        "im2col: custom-VJP matmul convolution (fast on CPU); xla: lax.conv (use on GPU, cuDNN); "
        "onednn: oneDNN's convolutions through the XLA FFI (CPU only; needs g++ and libdnnl-dev; faster, not yet "
        "the default: docs/agent.md); auto: xla on GPU/TPU, im2col on CPU",
    )
    conv_chunk: int = param(
        DEFAULT_CHUNK, "batch chunk of the im2col convolution (working set per loop step; B <= chunk: no loop)"
    )
    compute_dtype: str = choice(
        "float32",
        COMPUTE_DTYPES,
        "dtype of the encoders' matmul operands (convolutions and the dense layer); products accumulate and "
        "return in float32, parameters, optimiser state, normalisation and the heads stay float32 (mixed "
        "precision). bfloat16 is an option, not the default: no learning benchmark has been run with it",
    )
    per_layer_stats: bool = param(False, "also report feature statistics of every conv layer (--debug)")

    def __post_init__(self) -> None:
        check(self.features_dim >= 1, "agent.features_dim", self.features_dim, ">= 1")
        for key in ("actor_hidden", "critic_hidden"):
            value = getattr(self, key)
            check(
                all(isinstance(h, int) and h >= 1 for h in value),
                f"agent.{key}",
                value,
                "a list of positive integers",
            )
        check(self.actor_out_init > 0.0, "agent.actor_out_init", self.actor_out_init, "> 0")
        check(self.trunk_dim >= 0, "agent.trunk_dim", self.trunk_dim, ">= 0 (0: no trunk)")
        check(0.0 <= self.gamma <= 1.0, "agent.gamma", self.gamma, "in [0, 1]")
        check(self.n_step >= 1, "agent.n_step", self.n_step, ">= 1")
        check(0.0 < self.tau <= 1.0, "agent.tau", self.tau, "in (0, 1]")
        check(self.policy_noise >= 0.0, "agent.policy_noise", self.policy_noise, ">= 0")
        check(self.noise_clip >= 0.0, "agent.noise_clip", self.noise_clip, ">= 0")
        check(self.policy_delay >= 1, "agent.policy_delay", self.policy_delay, ">= 1")
        check(self.cnn_lr > 0.0, "agent.cnn_lr", self.cnn_lr, "> 0")
        check(self.mlp_lr > 0.0, "agent.mlp_lr", self.mlp_lr, "> 0")
        for key in ("cnn_grad_clip", "mlp_grad_clip", "actor_grad_clip", "critic_grad_clip"):
            value = getattr(self, key)
            check(value is None or value > 0.0, f"agent.{key}", value, "> 0 or null (off)")
        check(self.weight_decay >= 0.0, "agent.weight_decay", self.weight_decay, ">= 0")
        check(0.0 <= self.bn_momentum < 1.0, "agent.bn_momentum", self.bn_momentum, "in [0, 1)")
        check(self.conv_chunk >= 1, "agent.conv_chunk", self.conv_chunk, ">= 1")
        # choice() fields are validated by from_dict; direct construction is checked here too.
        for key, valid in (
            ("norm", NORMS),
            ("activation", ACTIVATIONS),
            ("encoder", ENCODERS),
            ("target_bn_stats", TARGET_BN_STATS),
            ("weight_decay_mode", WEIGHT_DECAY_MODES),
            ("conv_impl", CONV_IMPL_CHOICES),
            ("compute_dtype", COMPUTE_DTYPES),
        ):
            value = getattr(self, key)
            check(value in valid, f"agent.{key}", value, f"one of {', '.join(map(repr, valid))}")
