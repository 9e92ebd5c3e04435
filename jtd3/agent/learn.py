"""TD3 as pure jitted functions: :func:`act`, :func:`update`, :func:`update_many`.

One update (critic step ``t = state.step``, 0-based):

1. TD target with the target networks (BatchNorm running averages, no gradients), target policy smoothing
   and clipped double Q: ``y = r + gamma * (1 - terminated) * min_i Q'_i(s', clip(pi'(s') + clip(eps, -c, c),
   -1, 1))``, ``eps ~ N(0, policy_noise^2)``. Truncation is not in the batch: a truncated transition
   bootstraps like any other; only ``terminated`` stops the bootstrap.
2. Critic step: ``L = sum_i mean_B (Q_i(s, a) - y)^2`` through the critic encoder (BatchNorm in train mode,
   running stats updated). Gradients reach critic parameters only.
3. On policy steps (``(t + 1) % policy_delay == 0``): actor step, then Polyak target updates (params, and
   BatchNorm stats by ``target_bn_stats``). The actor loss is
   ``-mean Q1(stop_gradient(critic_features), pi(actor_features))`` with the critic's *updated* heads and the
   critic features computed in step 2 (DrQ-v2 style reuse; the critic encoder's update of step 2 is not
   re-run on them). ``separate``: ``actor_features`` come from the actor's own encoder, which learns only
   through the action. ``shared``: ``actor_features = stop_gradient(critic_features)``. In both topologies Q
   is never evaluated on actor-encoder features, and the actor gradient is taken with respect to actor
   parameters only, so the actor loss cannot move any critic parameter.

``encoder: original`` reproduces the PyTorch original's wiring, whose failure jtd3 fixes (kept to show it):
the actor loss is ``-mean Q1(actor_features, pi(actor_features))`` — Q1's head scored on the **actor**
encoder's features, so the actor encoder learns through Q1's state input as well as through the action
(Q1's parameters are held: the gradient is w.r.t. actor parameters only). There are no target encoders: the
TD target runs the **online** critic encoder (pre-update, running averages, no gradient) on ``next_obs`` and
feeds it to the target actor head and the target Q heads; Polyak updates move the MLP heads only.
Actor-side Q (``losses/actor_q``, ``debug/actor_q_{max,min}``: the Q the actor loss maximises) and the
critic-side Q of the same actions (``debug/actor_q_on_critic_features``) are logged next to the critic's own
Q (``losses/q1_mean``, the original's ``train/q1_value``); in the other topologies the two actor-side values
coincide.

Metrics are a flat dict of float32 scalars; see :func:`update` and docs/agent.md for the names.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jtd3.agent.diagnostics import feature_stats
from jtd3.agent.state import AgentSpec, TrainState, modules

__all__ = [
    "act",
    "encode",
    "param_norms",
    "smoothed_target_action",
    "td_target",
    "train_step",
    "update",
    "update_many",
    "validate_batch",
    "validate_obs",
]

Batch = dict[str, Any]


# ----------------------------------------------------------------------------------------------------------
# Pure TD3 math


def smoothed_target_action(action: jax.Array, key: jax.Array, policy_noise: float, noise_clip: float) -> jax.Array:
    """Target policy smoothing: ``clip(action + clip(N(0, policy_noise^2), -noise_clip, noise_clip), -1, 1)``."""
    noise = jnp.clip(jax.random.normal(key, action.shape, action.dtype) * policy_noise, -noise_clip, noise_clip)
    return jnp.clip(action + noise, -1.0, 1.0)


def td_target(reward: jax.Array, terminated: jax.Array, next_q: jax.Array, gamma: float | jax.Array) -> jax.Array:
    """Clipped double-Q target ``r + gamma * (1 - terminated) * min(next_q)``; ``next_q`` is (heads, B);
    ``gamma`` a scalar or, for n-step transitions, the per-sample ``gamma^m`` (B,)."""
    return reward + gamma * (1.0 - terminated) * jnp.min(next_q, axis=0)


# ----------------------------------------------------------------------------------------------------------
# Validation (runs at trace time: shapes and dtypes are static)


def validate_obs(spec: AgentSpec, obs: Any, name: str = "obs") -> int:
    """Check ``obs`` = {"camera": uint8 (B, *camera_shape), "kinematics": (B, K)}; return B."""
    if not isinstance(obs, dict) or set(obs) != {"camera", "kinematics"}:
        keys = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise ValueError(f"{name} must be a dict with keys 'camera' and 'kinematics', got {keys}")
    cam, kin = obs["camera"], obs["kinematics"]
    if cam.ndim != 4 or tuple(cam.shape[1:]) != spec.camera_shape or cam.dtype != jnp.uint8:
        raise ValueError(
            f"{name}['camera'] must be uint8 of shape (B, {', '.join(map(str, spec.camera_shape))}), "
            f"got {cam.dtype} {tuple(cam.shape)}"
        )
    b = cam.shape[0]
    if tuple(kin.shape) != (b, spec.kinematics_dim):
        raise ValueError(f"{name}['kinematics'] must have shape ({b}, {spec.kinematics_dim}), got {tuple(kin.shape)}")
    return b


def validate_batch(spec: AgentSpec, batch: Batch) -> int:
    """Check a replay batch (see :func:`update`) against ``spec``; return the batch size B."""
    expected = {"obs", "action", "reward", "next_obs", "terminated"}
    if isinstance(batch, dict) and "discount" in batch:  # n-step transitions (jtd3.replay.ReplayBuffer.gather)
        expected = expected | {"discount"}
    if not isinstance(batch, dict) or set(batch) != expected:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"batch must be a dict with keys {sorted(expected)}, got {keys}")
    b = validate_obs(spec, batch["obs"], "batch['obs']")
    nb = validate_obs(spec, batch["next_obs"], "batch['next_obs']")
    if nb != b:
        raise ValueError(f"batch['next_obs'] has batch size {nb}, batch['obs'] has {b}")
    shapes = {"action": (b, spec.action_dim), "reward": (b,), "terminated": (b,)}
    n_step = spec.config.n_step
    if ("discount" in batch) != (n_step > 1):  # the loop must sample with the agent's n_step
        raise ValueError(
            f"agent.n_step = {n_step}: n-step batches (n_step > 1) carry a 'discount' (gamma^m) per sample and "
            f"1-step batches none, got {'a' if 'discount' in batch else 'no'} discount; sample with "
            "ReplayBuffer.sample(..., n_step=agent.n_step, gamma=agent.gamma)"
        )
    if "discount" in batch:
        shapes["discount"] = (b,)
    for key, shape in shapes.items():
        if tuple(batch[key].shape) != shape:
            raise ValueError(f"batch[{key!r}] must have shape {shape}, got {tuple(batch[key].shape)}")
    return b


# ----------------------------------------------------------------------------------------------------------
# Network application


def encode(
    spec: AgentSpec, params: Any, stats: Any, camera: jax.Array, train: bool, layers: bool = False
) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    """Run the NatureCNN: ``(features, new_batch_stats, {"conv1": act1, ...})``.

    ``train=True`` uses batch statistics and returns updated running stats for BatchNorm;
    ``train=False`` uses ``stats`` as running averages (and returns them unchanged). The per-layer
    activations are collected only when ``layers`` is true (else ``{}``).
    """
    encoder = modules(spec).encoder
    variables = {"params": params}
    if spec.uses_batchnorm:
        variables["batch_stats"] = stats
    mutable = []
    if train and spec.uses_batchnorm:
        mutable.append("batch_stats")
    if layers:
        mutable.append("intermediates")
    if not mutable:
        return encoder.apply(variables, camera, train=train), stats, {}
    features, updated = encoder.apply(variables, camera, train=train, mutable=mutable)
    new_stats = updated["batch_stats"] if "batch_stats" in updated else stats
    acts = {name.removesuffix("_out"): value[0] for name, value in updated.get("intermediates", {}).items()}
    return features, new_stats, acts


def _stats_metrics(prefix: str, features: jax.Array, layers: dict[str, jax.Array]) -> dict[str, jax.Array]:
    out = feature_stats(features, f"debug/{prefix}_cnn_features_")
    for name, value in layers.items():
        out.update(feature_stats(value, f"debug/{prefix}_{name}_"))
    return out


# ----------------------------------------------------------------------------------------------------------
# One update


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    """One TD3 update (not jitted; :func:`update` is the jitted entry point). See the module docstring.

    Returns every metric of :func:`update` except ``param_norm/*`` (a property of the state, added by the
    entry points once per call).
    """
    spec = state.spec
    cfg = spec.config
    mods = modules(spec)
    per_layer = cfg.per_layer_stats
    validate_batch(spec, batch)
    obs, next_obs = batch["obs"], batch["next_obs"]
    kin = obs["kinematics"].astype(jnp.float32)
    next_kin = next_obs["kinematics"].astype(jnp.float32)
    action = batch["action"].astype(jnp.float32)
    reward = batch["reward"].astype(jnp.float32)
    terminated = batch["terminated"].astype(jnp.float32)
    # n-step batches carry their own bootstrap factor gamma^m (m steps summed into the reward)
    discount = batch["discount"].astype(jnp.float32) if "discount" in batch else cfg.gamma
    key = jax.random.wrap_key_data(state.key)
    key, k_noise = jax.random.split(key)

    # Each stage runs in a named scope (td_target, critic_grad, critic_adam, actor_grad, actor_adam,
    # target_update): the labels benchmarks/profile_update.py sums the XLA ops' time by.
    # 1. TD target: target networks, running averages, no gradients. In `shared` mode one target-encoder
    #    pass over next_obs feeds both the target actor and the target critic. `original`: there are no
    #    target encoders; the online critic encoder (pre-update, running averages) feeds both target heads.
    actor, critic = state.actor, state.critic
    with jax.named_scope("td_target"):
        if spec.original:
            critic_next, _, _ = encode(
                spec, critic.params["encoder"], critic.batch_stats.get("encoder"), next_obs["camera"], False
            )
            critic_next = lax.stop_gradient(critic_next)
            actor_next = critic_next
        else:
            critic_next, _, _ = encode(
                spec, critic.target_params["encoder"], critic.target_batch_stats.get("encoder"), next_obs["camera"],
                False,
            )
            if spec.separate:
                actor_next, _, _ = encode(
                    spec, actor.target_params["encoder"], actor.target_batch_stats.get("encoder"), next_obs["camera"],
                    False,
                )
            else:
                actor_next = critic_next
        next_action = mods.actor_head.apply({"params": actor.target_params["head"]}, actor_next, next_kin)
        next_action = smoothed_target_action(next_action, k_noise, cfg.policy_noise, cfg.noise_clip)
        next_q = mods.critic_head.apply({"params": critic.target_params["head"]}, critic_next, next_kin, next_action)
        target_q = lax.stop_gradient(td_target(reward, terminated, next_q, discount))

    # 2. Critic step (gradients w.r.t. critic parameters only).
    def critic_loss_fn(params):
        feats, new_stats, layers = encode(
            spec, params["encoder"], critic.batch_stats.get("encoder"), obs["camera"], True, per_layer
        )
        q = mods.critic_head.apply({"params": params["head"]}, feats, kin, action)
        loss = jnp.sum(jnp.mean(jnp.square(q - target_q[None]), axis=1))
        return loss, (q, feats, new_stats, layers)

    with jax.named_scope("critic_grad"):
        (critic_loss, (q, critic_feats, critic_stats, critic_layers)), critic_grads = jax.value_and_grad(
            critic_loss_fn, has_aux=True
        )(critic.params)
    with jax.named_scope("critic_adam"):
        critic = critic.apply_gradients(grads=critic_grads, batch_stats=_with_encoder(critic.batch_stats, critic_stats))
    critic_feats_fixed = lax.stop_gradient(critic_feats)  # what the actor step reads: no gradient to the critic

    metrics = {
        "losses/critic_loss": critic_loss,
        "losses/q1_mean": jnp.mean(q[0]),
        "losses/q2_mean": jnp.mean(q[1]),
        "losses/target_q_mean": jnp.mean(target_q),
        "losses/td_error": jnp.mean(jnp.abs(q - target_q[None])),
        "grad_norm/critic_cnn": optax.tree_utils.tree_norm(critic_grads["encoder"]),
        "grad_norm/critic_mlp": optax.tree_utils.tree_norm(critic_grads["head"]),
    }
    metrics.update(_stats_metrics("critic", critic_feats, critic_layers))

    # 3. Actor step and target updates (policy steps only).
    def policy_branch(_):
        def actor_loss_fn(params):
            if spec.separate:
                actor_feats, actor_stats, actor_layers = encode(
                    spec, params["encoder"], actor.batch_stats.get("encoder"), obs["camera"], True, per_layer
                )
            else:
                actor_feats, actor_stats, actor_layers = critic_feats_fixed, None, {}
            pi = mods.actor_head.apply({"params": params["head"]}, actor_feats, kin)
            # The critic-side Q of the policy's action: Q1 on the critic encoder's features.
            q1_critic = mods.critic_head.apply({"params": critic.params["head"]}, critic_feats_fixed, kin, pi)[0]
            if spec.original:
                # The original's actor loss: Q1 (its parameters held: gradients w.r.t. the actor's only) scored on
                # the ACTOR encoder's features, so the actor encoder also learns through Q1's state input.
                q1 = mods.critic_head.apply({"params": critic.params["head"]}, actor_feats, kin, pi)[0]
            else:
                q1 = q1_critic
            return -jnp.mean(q1), (q1, lax.stop_gradient(q1_critic), actor_feats, actor_stats, actor_layers)

        with jax.named_scope("actor_grad"):
            (actor_loss, (q1, q1_critic, actor_feats, actor_stats, actor_layers)), actor_grads = jax.value_and_grad(
                actor_loss_fn, has_aux=True
            )(actor.params)
        with jax.named_scope("actor_adam"):
            new_actor = actor.apply_gradients(
                grads=actor_grads, batch_stats=_with_encoder(actor.batch_stats, actor_stats)
            )
        with jax.named_scope("target_update"):
            sides = (
                new_actor.soft_update(cfg.tau, cfg.target_bn_stats),
                critic.soft_update(cfg.tau, cfg.target_bn_stats),
            )
        m = {
            "losses/actor_loss": actor_loss,
            "losses/actor_q": jnp.mean(q1),
            "debug/actor_q_max": jnp.max(q1),
            "debug/actor_q_min": jnp.min(q1),
            "debug/actor_q_on_critic_features": jnp.mean(q1_critic),
            "grad_norm/actor_mlp": optax.tree_utils.tree_norm(actor_grads["head"]),
        }
        if spec.separate:
            m["grad_norm/actor_cnn"] = optax.tree_utils.tree_norm(actor_grads["encoder"])
            m.update(_stats_metrics("actor", actor_feats, actor_layers))
        return sides, {k: v.astype(jnp.float32) for k, v in m.items()}

    def skip_branch(_):
        shapes = jax.eval_shape(policy_branch, None)[1]
        return (actor, critic), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    is_policy = (critic.step % cfg.policy_delay) == 0  # critic.step counts this update already
    if cfg.policy_delay == 1:
        (actor, critic), actor_metrics = policy_branch(None)
    else:
        (actor, critic), actor_metrics = lax.cond(is_policy, policy_branch, skip_branch, None)
    metrics.update(actor_metrics)
    metrics["losses/actor_updates"] = is_policy.astype(jnp.float32)

    new_state = state.replace(actor=actor, critic=critic, key=jax.random.key_data(key))
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _with_encoder(stats: Any, encoder_stats: Any) -> Any:
    """The side's BatchNorm stats with the encoder's replaced by this pass's (unchanged without an encoder)."""
    return {"encoder": encoder_stats} if "encoder" in stats else stats


def param_norms(state: TrainState) -> dict[str, jax.Array]:
    """``param_norm/{critic_cnn, critic_mlp, actor_mlp[, actor_cnn]}``: global L2 norms of the online params."""
    out = {
        "param_norm/critic_cnn": optax.tree_utils.tree_norm(state.critic.params["encoder"]),
        "param_norm/critic_mlp": optax.tree_utils.tree_norm(state.critic.params["head"]),
        "param_norm/actor_mlp": optax.tree_utils.tree_norm(state.actor.params["head"]),
    }
    if "encoder" in state.actor.params:
        out["param_norm/actor_cnn"] = optax.tree_utils.tree_norm(state.actor.params["encoder"])
    return out


# ----------------------------------------------------------------------------------------------------------
# Public jitted entry points


@jax.jit
def update(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    """One TD3 update (jitted). Returns the new state and a flat dict of float32 scalar metrics.

    ``batch``: ``{"obs": {"camera": uint8 (B, *camera), "kinematics": (B, K)}, "action": (B, A),
    "reward": (B,), "next_obs": {...}, "terminated": (B,) float or bool}``.

    Metrics: ``losses/{critic_loss, q1_mean, q2_mean, target_q_mean, td_error, actor_loss, actor_q,
    actor_updates}``, ``debug/actor_q_{max, min, on_critic_features}``, ``grad_norm/{critic_cnn, critic_mlp,
    actor_mlp[, actor_cnn]}``, ``param_norm/{...}``, ``debug/{critic,actor}_cnn_features_{l2_norm,
    l2_norm_max, mean, std, min, max, dead_fraction}`` (``actor`` and ``actor_cnn`` only when the actor owns
    an encoder: ``separate``, ``original``) and, with
    ``per_layer_stats``, ``debug/{critic,actor}_conv{1,2,3}_{...}``. Actor-side metrics (actor_loss,
    actor_q, grad_norm/actor_*, debug/actor_*) describe this step's actor update and are 0.0 when
    ``losses/actor_updates`` is 0 (a non-policy step); skip them then. ``param_norm/*`` are the norms of the
    returned state's online parameters.
    """
    state, metrics = train_step(state, batch)
    return state, {**metrics, **param_norms(state)}


def is_actor_metric(name: str) -> bool:
    """Metrics computed on policy steps only (0.0 on the others; ``losses/actor_updates`` counts them)."""
    return name in ("losses/actor_loss", "losses/actor_q") or name.startswith(("grad_norm/actor", "debug/actor"))


def metric_reduction(name: str) -> str:
    """How a metric is reduced over several updates: ``"max"`` / ``"min"`` for names ending in ``_max`` /
    ``_min``, else ``"mean"``. The one rule behind :func:`update_many` (over its K steps, in jnp) and
    ``jtd3.training.bookkeeping.MetricWindow`` (over update calls between two log writes, in Python)."""
    if name.endswith("_max"):
        return "max"
    if name.endswith("_min"):
        return "min"
    return "mean"


@jax.jit
def update_many(state: TrainState, batches: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    """K TD3 updates in one call (``lax.scan``); every leaf of ``batches`` has a leading K axis.

    Policy delay and target updates run inside the loop exactly as K calls of :func:`update` would
    (bit-for-bit the same state). Metrics have the same names, reduced over the K steps: names ending in
    ``_max``/``_min`` take the max/min, ``losses/actor_updates`` is the count of actor updates, everything
    else the mean. Actor-side metrics (see :func:`update`) are reduced over the policy steps only (0.0 when
    there were none). ``param_norm/*`` describe the returned (final) state.
    """
    leaves = jax.tree.leaves(batches)
    if not leaves or any(leaf.ndim < 1 for leaf in leaves) or len({leaf.shape[0] for leaf in leaves}) != 1:
        raise ValueError("update_many: every leaf of batches needs the same leading K axis")
    if leaves[0].shape[0] < 1:
        raise ValueError("update_many: batches hold K = 0 steps; need K >= 1")

    state, per_step = lax.scan(train_step, state, batches)
    policy = per_step["losses/actor_updates"]
    count = jnp.sum(policy)
    out = {}
    for name, values in per_step.items():
        if name == "losses/actor_updates":
            out[name] = count
            continue
        how = metric_reduction(name)
        if is_actor_metric(name):
            mask = policy > 0
            if how == "max":
                red = jnp.max(jnp.where(mask, values, -jnp.inf))
            elif how == "min":
                red = jnp.min(jnp.where(mask, values, jnp.inf))
            else:
                red = jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1.0)
            out[name] = jnp.where(count > 0, red, 0.0)
        else:
            out[name] = {"max": jnp.max, "min": jnp.min, "mean": jnp.mean}[how](values)
    return state, {**out, **param_norms(state)}


@jax.jit
def act(state: TrainState, obs: dict[str, jax.Array], key: jax.Array, noise_scale: float | jax.Array) -> jax.Array:
    """Actions ``clip(pi(obs) + noise_scale * N(0, 1), -1, 1)``, shape (B, A); jitted.

    Uses the online actor (and in ``shared`` mode the online critic encoder) with BatchNorm running
    averages, so it is deterministic per sample for ``noise_scale = 0``. ``key``: a JAX PRNG key, typed or
    raw uint32 key data (unused when ``noise_scale`` is 0, but always required).
    """
    spec = state.spec
    validate_obs(spec, obs)
    mods = modules(spec)
    if spec.separate:
        enc_params, enc_stats = state.actor.params["encoder"], state.actor.batch_stats.get("encoder")
    else:
        enc_params, enc_stats = state.critic.params["encoder"], state.critic.batch_stats.get("encoder")
    feats, _, _ = encode(spec, enc_params, enc_stats, obs["camera"], False)
    action = mods.actor_head.apply({"params": state.actor.params["head"]}, feats, obs["kinematics"].astype(jnp.float32))
    if key.dtype == jnp.uint32:
        key = jax.random.wrap_key_data(key)
    noise = jax.random.normal(key, action.shape, action.dtype) * noise_scale
    return jnp.clip(action + noise, -1.0, 1.0)
