"""Data-parallel logistic regression in plain numpy on scikit-learn's digits.

Each of 2 workers computes the gradient on its half of the training data; the gradients
are summed with hpcray.collective.allreduce (an MPI sub-communicator of the job), so all
workers take the same step. Rank 0 checkpoints the weights (HDF5) every 10 epochs; with
``--fail-at N`` worker 1 raises at epoch N and the run resumes from the latest checkpoint.

    python examples/train_numpy_logreg.py [--epochs 200] [--fail-at 60]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

import hpcray
import hpcray.collective as col
from hpcray import train
from hpcray.train import (
    Checkpoint,
    CheckpointConfig,
    DataParallelTrainer,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from hpcray.train.h5 import load_arrays, save_arrays


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x / 16.0, y, test_size=0.2, random_state=0)


def train_loop(config: dict) -> None:
    ctx = train.get_context()
    data = train.get_dataset_shard("train")
    x, y = data["x"], data["y"]
    x_test, y_test = config["x_test"], config["y_test"]
    w, b, start = np.zeros((x.shape[1], 10)), np.zeros(10), 0
    checkpoint = train.get_checkpoint()
    if checkpoint is not None:
        state = load_arrays(os.path.join(checkpoint.path, "model.h5"))
        w, b, start = state["w"], state["b"], int(state["epoch"]) + 1
    for epoch in range(start, config["epochs"]):
        if epoch == config.get("fail_at") and checkpoint is None and ctx.world_rank == 1:
            raise RuntimeError(f"injected failure at epoch {epoch}")
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y] + 1e-12).sum()
        p[np.arange(len(y)), y] -= 1
        # one allreduce: gradient sums, loss sum and sample count of every worker
        buf = np.concatenate([(x.T @ p).ravel(), p.sum(0), [loss, len(y)]])
        col.allreduce(buf)
        n = buf[-1]
        w -= config["lr"] * buf[:w.size].reshape(w.shape) / n
        b -= config["lr"] * buf[w.size:w.size + 10] / n
        accuracy = float(((x_test @ w + b).argmax(1) == y_test).mean())
        metrics = {"epoch": epoch, "loss": float(buf[-2] / n), "test_accuracy": accuracy}
        if ctx.world_rank == 0 and (epoch % 10 == 9 or epoch == config["epochs"] - 1):
            with tempfile.TemporaryDirectory() as tmp:
                save_arrays(os.path.join(tmp, "model.h5"), {"w": w, "b": b,
                                                             "epoch": np.array(epoch)})
                train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            train.report(metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--fail-at", type=int, default=None)
    parser.add_argument("--storage", default=os.path.join(tempfile.gettempdir(), "hpcray-examples"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    hpcray.init(num_cpus=2)
    x_train, x_test, y_train, y_test = digits()
    trainer = DataParallelTrainer(
        train_loop,
        train_loop_config={"epochs": args.epochs, "lr": 1.0, "fail_at": args.fail_at,
                           "x_test": x_test, "y_test": y_test},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="numpy_logreg", storage_path=args.storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=1),
                             verbose=0 if args.quiet else 1),
        datasets={"train": {"x": x_train, "y": y_train}},
    )
    result = trainer.fit()
    print(f"test accuracy {result.metrics['test_accuracy']:.4f} after "
          f"{result.metrics['epoch'] + 1} epochs; checkpoint {result.checkpoint.path}")
    print("RESULT", {"accuracy": result.metrics["test_accuracy"],
                     "attempts": result.metrics["attempt"] + 1,
                     "checkpoints": sorted(os.path.basename(c.path)
                                           for c, _ in result.best_checkpoints)})


if __name__ == "__main__":
    main()
