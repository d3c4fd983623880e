"""Tuner(PPO, param_space=config) with PBT: trials report RLlib's flattened metric, exploit
restores another trial's algorithm checkpoint."""

import sys
import tempfile

import hpcray
from hpcray import tune
from hpcray.rllib.algorithms.ppo import PPO, PPOConfig

sys.path.insert(0, sys.argv[1])
from common import emit

hpcray.init()
config = (PPOConfig().environment("CartPole-v1")
          .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
          .training(lr=tune.loguniform(1e-4, 1e-3), train_batch_size_per_learner=400,
                    minibatch_size=200, num_epochs=2)
          .rl_module(model_config={"fcnet_hiddens": [32]})
          .debugging(seed=tune.randint(0, 1000)))
pbt = tune.PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=2,
                                   hyperparam_mutations={"lr": tune.loguniform(1e-4, 1e-3)})
results = tune.Tuner(
    PPO, param_space=config,
    tune_config=tune.TuneConfig(metric="env_runners/episode_return_mean", mode="max",
                                num_samples=4, scheduler=pbt),
    run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), name="pbt", verbose=0,
                              stop={"training_iteration": 8},
                              checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=2)),
).fit()
best = results.get_best_result()
emit({"iterations": [r.metrics["training_iteration"] for r in results],
      "errors": len(results.errors), "perturbations": pbt.num_perturbations,
      "best": best.metrics["env_runners/episode_return_mean"],
      "lifetime": best.metrics["num_env_steps_sampled_lifetime"]})
