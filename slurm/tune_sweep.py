"""A Tune sweep that survives preemption: run it with slurm/sweep-requeue.sbatch.

    sbatch slurm/sweep-requeue.sbatch slurm/tune_sweep.py --samples 32

On the warning signal (or SIGTERM) hpcray.tune saves the experiment in the job's state
directory, and hpcray requeues the job. The rerun (same job id, same state directory) finds the
experiment there and Tuner.restore continues it: finished trials kept, running ones from their
last checkpoint, ASHA's rungs and the searcher as they were when the signal came.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import hpcray
from hpcray import tune


def train(config: dict) -> None:
    """Stands in for a training run: a made-up loss, one epoch per report, checkpointed."""
    start = tune.get_checkpoint()
    epoch = start.to_dict()["epoch"] if start else 0
    while epoch < config["epochs"]:
        epoch += 1
        time.sleep(0.2)
        loss = (math.log10(config["lr"]) + 2.5) ** 2 + (config["width"] - 48) ** 2 / 1000 \
            + 1 / epoch
        tune.report({"loss": loss}, checkpoint=tune.Checkpoint.from_dict({"epoch": epoch}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=27)
    args = parser.parse_args()
    hpcray.init()
    ctx = hpcray.get_runtime_context()
    path = os.path.join(ctx.get_state_dir(), "tune_sweep")
    restoring = tune.Tuner.can_restore(path)
    if restoring:  # a requeued run: go on where the last one stopped
        tuner = tune.Tuner.restore(path, train)
    else:
        tuner = tune.Tuner(
            train,
            param_space={"lr": tune.loguniform(1e-4, 1e-1), "width": tune.randint(16, 80),
                         "epochs": args.epochs},
            tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=args.samples,
                                        scheduler=tune.ASHAScheduler(max_t=args.epochs)),
            run_config=tune.RunConfig(storage_path=os.path.dirname(path),
                                      name=os.path.basename(path)))
    print(f"job {ctx.get_job_id()} restart {ctx.get_restart_count()}: "
          f"{'restoring' if restoring else 'starting'} the sweep at {path}",
          flush=True)
    best = tuner.fit().get_best_result()
    print(f"done: best loss {best.metrics['loss']:.4f} with {best.config}", flush=True)


if __name__ == "__main__":
    main()
