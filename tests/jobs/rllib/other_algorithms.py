"""DQN and APPO learn CartPole-v1 a little within bounded steps; SAC runs on Pendulum-v1."""

import math
import sys

import hpcray
from hpcray.rllib.algorithms.appo import APPOConfig
from hpcray.rllib.algorithms.dqn import DQNConfig
from hpcray.rllib.algorithms.sac import SACConfig

sys.path.insert(0, sys.argv[1])
from common import emit

hpcray.init()
out = {}
dqn = (DQNConfig().environment("CartPole-v1")
       .training(lr=1e-3, n_step=3, epsilon=[(0, 1.0), (5000, 0.02)])
       .rl_module(model_config={"fcnet_hiddens": [64], "fcnet_activation": "tanh"})
       .debugging(seed=1).build_algo())
out["dqn"] = [dqn.train()["env_runners"]["episode_return_mean"] for _ in range(14)]
dqn.stop()

appo = (APPOConfig().environment("CartPole-v1")
        .env_runners(num_env_runners=2, num_envs_per_env_runner=4)
        .training(lr=1e-3, train_batch_size_per_learner=1000, entropy_coeff=0.0, num_epochs=4)
        .rl_module(model_config={"fcnet_hiddens": [64, 64]}).debugging(seed=3).build_algo())
out["appo"] = [appo.train()["env_runners"]["episode_return_mean"] for _ in range(60)]
appo.stop()

sac = (SACConfig().environment("Pendulum-v1")
       .training(num_steps_sampled_before_learning_starts=200, train_batch_size_per_learner=64)
       .reporting(min_sample_timesteps_per_iteration=200)
       .rl_module(model_config={"fcnet_hiddens": [32, 32]}).debugging(seed=1).build_algo())
results = [sac.train() for _ in range(3)]
learner = results[-1]["learners"]["default_policy"]
out["sac"] = {"finite": all(math.isfinite(v) for v in learner.values()),
              "alpha": learner["alpha_value"], "steps": results[-1]["num_env_steps_sampled_lifetime"]}
sac.stop()
emit(out)
