"""A Tune sweep whose trials are data-parallel trainers: ASHA over the learning rate of
train_numpy_logreg.py's 2-worker logistic regression, two trainers at a time on 4 workers.

    python examples/tune_trainer.py [--samples 6] [--epochs 60]

Each trial fits the trainer with its own ``train_loop_config`` (merged over the trainer's);
every report of the trainer's workers is a report of the trial, so ASHA stops weak learning
rates after a few epochs, and their workers are freed for the next trial.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from train_numpy_logreg import digits, train_loop

import hpcray
from hpcray import tune
from hpcray.train import DataParallelTrainer, ScalingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--storage", default=os.path.join(tempfile.gettempdir(), "hpcray-examples"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    hpcray.init(num_cpus=4)
    x_train, x_test, y_train, y_test = digits()
    trainer = DataParallelTrainer(
        train_loop,
        train_loop_config={"epochs": args.epochs, "x_test": x_test, "y_test": y_test},
        scaling_config=ScalingConfig(num_workers=2),
        datasets={"train": {"x": x_train, "y": y_train}},
    )
    grid = tune.Tuner(
        trainer,
        param_space={"train_loop_config": {"lr": tune.loguniform(0.01, 3.0)}},
        tune_config=tune.TuneConfig(
            metric="test_accuracy", mode="max", num_samples=args.samples,
            search_alg=tune.search.BasicVariantGenerator(random_state=0),
            scheduler=tune.ASHAScheduler(max_t=args.epochs, grace_period=10,
                                         reduction_factor=3)),
        run_config=tune.RunConfig(name="tune_trainer", storage_path=args.storage,
                                  verbose=0 if args.quiet else 1),
    ).fit()
    best = grid.get_best_result()
    epochs = sorted(r.metrics["training_iteration"] for r in grid)
    print(f"best lr {best.config['train_loop_config']['lr']:.3g}: test accuracy "
          f"{best.metrics['test_accuracy']:.4f}; epochs per trial {epochs}")
    print("RESULT", {"accuracy": best.metrics["test_accuracy"], "epochs": epochs,
                     "errors": grid.num_errors})


if __name__ == "__main__":
    main()
