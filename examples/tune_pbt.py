"""Population based training: a population of noisy quadratic optimisers whose learning rate
PBT tunes while they train, cloning the best members' checkpoints.

    python examples/tune_pbt.py

Each trial minimises f(theta) = |theta - target|^2 by gradient descent with its own learning
rate and checkpoints every step; every 4 steps the worst quarter of the population copies a
member of the best quarter (weights and config) and perturbs the learning rate.
"""

from __future__ import annotations

import time

import numpy as np

import hpcray
from hpcray import tune

TARGET = np.linspace(-3, 3, 50)


def train(config: dict) -> None:
    start = tune.get_checkpoint()
    theta = start.to_dict()["theta"] if start else np.zeros_like(TARGET)
    rng = np.random.default_rng()
    while True:
        grad = 2 * (theta - TARGET) + rng.normal(0, 0.5, size=theta.shape)
        theta = theta - config["lr"] * grad
        time.sleep(0.01)  # stands for a real training step; PBT needs trials that overlap
        loss = float(np.sum((theta - TARGET) ** 2))
        tune.report({"loss": loss, "lr": config["lr"]},
                    checkpoint=tune.Checkpoint.from_dict({"theta": theta}))


if __name__ == "__main__":
    hpcray.init()
    pbt = tune.PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=4,
        hyperparam_mutations={"lr": tune.loguniform(1e-3, 0.45)})
    results = tune.Tuner(
        train,
        param_space={"lr": tune.loguniform(1e-3, 3e-2)},
        tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=8, scheduler=pbt),
        run_config=tune.RunConfig(name="tune_pbt_example", stop={"training_iteration": 40},
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    ).fit()
    best = results.get_best_result()
    print(f"best loss {best.metrics['loss']:.4f} with lr {best.config['lr']:.4g}; "
          f"{pbt.num_perturbations} exploit/explore steps")
