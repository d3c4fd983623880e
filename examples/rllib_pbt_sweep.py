"""A PBT sweep of PPO on CartPole-v1 through hpcray.tune, as with Ray Tune + RLlib.

    pip install -e ".[rllib]"
    python examples/rllib_pbt_sweep.py            # or: hpcray run -n 5 examples/rllib_pbt_sweep.py

Each trial is a PPO algorithm (sampling in the trial's own process: num_env_runners=0) on a
worker rank. Every 4 iterations PBT makes the worst quarter of the population clone the best
quarter: the exploit restores the better algorithm's checkpoint (weights, optimizer, runner
state), the explore perturbs its learning rate and clip parameter. Under Slurm,
slurm/rllib-pbt-requeue.sbatch requeues the sweep on preemption and this script resumes it.
"""

from __future__ import annotations

import os
import sys

import hpcray
from hpcray import tune
from hpcray.rllib.algorithms.ppo import PPOConfig

ITERATIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 24

if __name__ == "__main__":
    hpcray.init()
    config = (PPOConfig().environment("CartPole-v1")
              .env_runners(num_env_runners=0, num_envs_per_env_runner=4)
              .training(lr=tune.loguniform(1e-4, 1e-3), clip_param=tune.uniform(0.1, 0.3),
                        train_batch_size_per_learner=1000, minibatch_size=250, num_epochs=6)
              .rl_module(model_config={"fcnet_hiddens": [64, 64]})
              .debugging(seed=tune.randint(0, 10_000)))
    pbt = tune.PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=4,
        hyperparam_mutations={"lr": tune.loguniform(1e-4, 1e-3),
                              "clip_param": tune.uniform(0.1, 0.3)})
    # the experiment lives in the job's state dir, kept across Slurm requeues
    path = os.path.join(hpcray.get_runtime_context().get_state_dir(), "rllib_pbt")
    if tune.Tuner.can_restore(path):
        print(f"resuming the sweep in {path}")
        tuner = tune.Tuner.restore(path, "PPO")
    else:
        tuner = tune.Tuner(
            "PPO", param_space=config,  # or the class, PPO
            tune_config=tune.TuneConfig(metric="env_runners/episode_return_mean", mode="max",
                                        num_samples=4, scheduler=pbt),
            run_config=tune.RunConfig(
                storage_path=os.path.dirname(path), name="rllib_pbt",
                stop={"training_iteration": ITERATIONS,
                      "env_runners/episode_return_mean": 450},
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_frequency=4)))
    results = tuner.fit()
    best = results.get_best_result()
    print(f"best mean return {best.metrics['env_runners/episode_return_mean']:.1f} after "
          f"{best.metrics['training_iteration']} iterations with lr {best.config['lr']:.2e}, "
          f"clip_param {best.config['clip_param']:.2f}; "
          f"{pbt.num_perturbations} exploit/explore steps")
