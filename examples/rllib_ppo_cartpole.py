"""PPO on CartPole-v1 with hpcray.rllib: RLlib's new-API-stack script, only the import changed.

    pip install -e ".[rllib]"
    python examples/rllib_ppo_cartpole.py          # or: hpcray run -n 3 examples/rllib_ppo_cartpole.py

Two env runners (actors on the two worker ranks) each step 4 CartPoles as one gymnasium
vector env with the policy in the loop; the learner (in this process) runs PPO's update and
publishes the weights with one put per iteration. The same seed gives the same curve on every
run. Training stops at a mean return of 450, then the greedy policy is evaluated, the
algorithm checkpointed and restored onto one env runner.
"""

from __future__ import annotations

import tempfile
import time

import hpcray
from hpcray.rllib.algorithms.algorithm import Algorithm
from hpcray.rllib.algorithms.ppo import PPOConfig

if __name__ == "__main__":
    hpcray.init()
    config = (PPOConfig()
              .environment("CartPole-v1")
              .env_runners(num_env_runners=2, num_envs_per_env_runner=4)
              .training(lr=3e-4, train_batch_size_per_learner=2000, minibatch_size=250,
                        num_epochs=8)
              .rl_module(model_config={"fcnet_hiddens": [64, 64], "fcnet_activation": "tanh"})
              .evaluation(evaluation_duration=10)
              .debugging(seed=7))
    algo = config.build_algo()
    start = time.perf_counter()
    for _ in range(100):
        result = algo.train()
        ret = result["env_runners"]["episode_return_mean"]
        print(f"iter {result['training_iteration']:3d}  return {ret:6.1f}  "
              f"env steps {result['num_env_steps_sampled_lifetime']:7d}  "
              f"{result['time_this_iter_s']:.2f} s")
        if ret >= 450:
            break
    print(f"reached {ret:.1f} in {time.perf_counter() - start:.1f} s")
    print(f"greedy evaluation: {algo.evaluate()['env_runners']['episode_return_mean']:.1f}")
    path = algo.save_to_path(tempfile.mkdtemp(prefix="ppo_cartpole_"))
    algo.stop()

    # a checkpoint restores onto another number of env runners
    restored = config.copy().env_runners(num_env_runners=1).build_algo()
    restored.restore_from_path(path)
    print(f"restored at iteration {restored.iteration} onto 1 env runner: "
          f"next return {restored.train()['env_runners']['episode_return_mean']:.1f}")
    restored.stop()
    # or, with the checkpoint's own config:
    again = Algorithm.from_checkpoint(path)
    print(f"from_checkpoint: {type(again).__name__} at iteration {again.iteration}")
    again.stop()
