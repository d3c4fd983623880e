"""Tuner("PPO") on an env registered with tune.register_env in the driver only: the trial
(on a worker rank) and its env runner (an actor on a rank) both make the registered env;
Tuner("name") of a trainable registered with tune.register_trainable."""

import sys
import tempfile

import gymnasium as gym

import hpcray
from hpcray import tune
from hpcray.rllib.algorithms.ppo import PPOConfig

sys.path.insert(0, sys.argv[1])
from common import emit


class ScaledCartPole(gym.Wrapper):
    """CartPole paying env_config["scale"] per step: every return is scale x its length."""

    def __init__(self, env_config):
        super().__init__(gym.make("CartPole-v1"))
        self.scale = float(env_config["scale"])

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        return obs, reward * self.scale, term, trunc, info


def constant(config):
    tune.report({"score": config["x"] * 2})


hpcray.init()
tune.register_env("scaled_cartpole", lambda cfg: ScaledCartPole(cfg))
tune.register_trainable("constant", constant)
storage = tempfile.mkdtemp()
config = (PPOConfig().environment("scaled_cartpole", env_config={"scale": 3})
          .env_runners(num_env_runners=1, num_envs_per_env_runner=2)
          .training(lr=tune.grid_search([3e-4, 1e-3]), train_batch_size_per_learner=400,
                    minibatch_size=200, num_epochs=2)
          .rl_module(model_config={"fcnet_hiddens": [32]})
          .debugging(seed=3))
results = tune.Tuner(
    "PPO", param_space=config,
    tune_config=tune.TuneConfig(metric="env_runners/episode_return_mean", mode="max"),
    run_config=tune.RunConfig(storage_path=storage, name="by_name", verbose=0,
                              stop={"training_iteration": 2}),
).fit()
other = tune.Tuner("constant", param_space={"x": tune.grid_search([1, 2])},
                   run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
try:
    tune.Tuner("NoSuchAlgo")
    unknown = ""
except tune.TuneError as exc:
    unknown = str(exc)
emit({"errors": [str(e)[-400:] for e in results.errors],
      "iterations": [r.metrics["training_iteration"] for r in results],
      "returns": [r.metrics["env_runners"]["episode_return_mean"] for r in results],
      "lens": [r.metrics["env_runners"]["episode_len_mean"] for r in results],
      "lrs": sorted(r.config["lr"] for r in results),
      "scores": sorted(r.metrics["score"] for r in other), "unknown": unknown})
