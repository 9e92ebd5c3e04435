"""Flags of a tiny training run (a few hundred steps, batch 8, 50-step episodes) shared by the training tests."""

TINY_RUN = [
    "--learning-starts", "60",
    "--batch-size", "8",
    "--eval-freq", "80",
    "--checkpoint-freq", "80",
    "--num-eval-episodes", "1",
    "--set", "env.max_episode_steps=50",
    "--set", "train.replay.capacity=2000",
    "--set", "train.log_freq=20",
    "--set", "agent.actor_hidden=[32, 32]",
    "--set", "agent.critic_hidden=[32, 32]",
]
