"""Look inside a checkpoint's deterministic policy on one evaluation episode (scenario 0, route start).

Prints, every ``--every`` agent steps of the episode's last ``--tail`` steps: route position, speed, the
action, and the nearest other vehicle (distance, its position in the ego frame, speed, bumper gap if it is in
the ego's corridor ahead). With ``--q-grid-at K`` it also prints the critic's Q1 over a grid of actions at
agent step K, beside the policy's own action: a Q that is monotone in an action dimension puts the TD3 actor on
a corner of the action box (bang-bang control).

    python scripts/diagnose_policy.py runs/bench_default/runs/seed1 --step 20000 --seed 2146583648 --q-grid-at 260
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from jtd3.agent.learn import encode
from jtd3.agent.state import modules
from jtd3.envs import make_env
from jtd3.evaluate import AgentPolicy, load_agent


def q_grid(state, obs, n: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """min(Q1, Q2) at ``obs`` for actions on an n x n grid over [-1, 1]^2: (grid values, Q (steer, speed))."""
    spec, mods = state.spec, modules(state.spec)
    batch = {k: jnp.asarray(v)[None] for k, v in obs.items()}
    feats, _, _ = encode(spec, state.critic.params["encoder"], state.critic.batch_stats.get("encoder"), batch["camera"], False)
    g = np.linspace(-1.0, 1.0, n)
    actions = jnp.asarray([[s, v] for s in g for v in g], jnp.float32)
    q = mods.critic_head.apply(
        {"params": state.critic.params["head"]},
        jnp.repeat(feats, len(actions), 0),
        jnp.repeat(batch["kinematics"].astype(jnp.float32), len(actions), 0),
        actions,
    )
    return g, np.asarray(q.min(0)).reshape(n, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run directory")
    ap.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    ap.add_argument("--seed", type=int, required=True, help="episode reset seed")
    ap.add_argument("--tail", type=int, default=40, help="print the episode's last N agent steps")
    ap.add_argument("--every", type=int, default=2, help="print every k-th of them")
    ap.add_argument("--q-grid-at", type=int, help="print the critic's Q over an action grid at this agent step")
    args = ap.parse_args()

    cfg, state, step = load_agent(args.run, args.step)
    env = make_env(dataclasses.replace(cfg.env, route_start="beginning", scenario=0))
    policy = AgentPolicy(state)
    obs, info = env.reset(seed=args.seed)
    rows = []
    while True:
        if args.q_grid_at is not None and len(rows) == args.q_grid_at:
            g, q = q_grid(state, obs)
            print(f"Q at agent step {len(rows)} (route s {info.get('route_s', 0.0):.1f} m, "
                  f"{info.get('speed_kmh', 0.0):.1f} km/h); the policy's action: {np.round(policy(obs), 2)}")
            print("steer \\ speed " + " ".join(f"{v:6.2f}" for v in g))
            for s, row in zip(g, q):
                print(f"{s:13.2f} " + " ".join(f"{x:6.1f}" for x in row))
        action = policy(obs)
        obs, _, terminated, truncated, info = env.step(action)
        truth = env.unwrapped.ground_truth()
        ego, others = truth.ego, truth.vehicles
        near = (math.nan,) * 4
        if len(others):
            d = others.location[:, :2] - ego.location[:2]
            i = int(np.argmin(np.hypot(d[:, 0], d[:, 1])))
            yaw = math.radians(ego.yaw)
            near = (float(np.hypot(*d[i])), math.cos(yaw) * d[i, 0] + math.sin(yaw) * d[i, 1],
                    -math.sin(yaw) * d[i, 0] + math.cos(yaw) * d[i, 1], float(np.hypot(*others.velocity[i, :2])) * 3.6)
        ahead, lead = truth.ahead, truth.lead  # the reward's ground-truth corridor; the obstacle sensor
        rows.append((info["route_s"], ego.speed * 3.6, *action, *near, ahead.gap_m if ahead else math.nan,
                     lead.gap_m if lead else math.nan))
        if terminated or truncated:
            break
    print(f"checkpoint {step}, seed {args.seed}: {info['termination_reason']} after {len(rows)} agent steps")
    print(" step  route_s   km/h  steer  speed | nearest: dist     x      y   km/h | gap ahead  sensor gap")
    for k in range(max(0, len(rows) - args.tail), len(rows), args.every):
        r = rows[k]
        print(f"{k:5d} {r[0]:8.1f} {r[1]:6.1f} {r[2]:6.2f} {r[3]:6.2f} | {r[4]:13.1f} {r[5]:5.1f} {r[6]:6.1f} "
              f"{r[7]:6.1f} | {r[8]:9.1f} {r[9]:11.1f}")


if __name__ == "__main__":
    main()
