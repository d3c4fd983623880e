"""Shared by the rllib job scripts: the PPO CartPole config the tests train."""

from __future__ import annotations

import json

from hpcray.rllib.algorithms.ppo import PPOConfig


def cartpole_ppo(num_env_runners: int = 2, seed: int = 7, num_envs: int = 4) -> PPOConfig:
    return (PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=num_envs)
            .training(lr=3e-4, train_batch_size_per_learner=2000, minibatch_size=250,
                      num_epochs=8)
            .rl_module(model_config={"fcnet_hiddens": [64, 64]})
            .debugging(seed=seed))


def curve(results: list[dict]) -> list:
    """What must repeat bit for bit: returns, losses and step counts of each iteration."""
    return [(r["env_runners"]["episode_return_mean"], r["num_env_steps_sampled_lifetime"],
             r["learners"]["default_policy"]["total_loss"]) for r in results]


def emit(payload: dict) -> None:
    print("RESULT " + json.dumps(payload), flush=True)
