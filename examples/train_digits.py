"""A PyTorch classifier on scikit-learn's digits with TorchTrainer on 2 workers.

torch.distributed (gloo) is set up by the trainer; the model is wrapped in DDP by
prepare_model and each worker reads its half of the data through prepare_data_loader.
Every epoch is checkpointed (model, optimizer, epoch); ``--fail-at N`` makes worker 1 raise
at epoch N on the first attempt and the run resumes from the latest checkpoint.

    python examples/train_digits.py [--epochs 30] [--fail-at 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import hpcray
from hpcray import train
from hpcray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from hpcray.train.torch import TorchTrainer, prepare_data_loader, prepare_model


def datasets():
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import TensorDataset

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.2,
                                                        random_state=0, stratify=y)

    def tensors(a, b):
        return TensorDataset(torch.tensor(a, dtype=torch.float32), torch.tensor(b))

    return tensors(x_train, y_train), tensors(x_test, y_test)


def train_loop(config: dict) -> None:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    ctx = train.get_context()
    train_set, test_set = datasets()
    loader = prepare_data_loader(DataLoader(train_set, batch_size=config["batch_size"],
                                            shuffle=True))
    model = prepare_model(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    start = 0
    checkpoint = train.get_checkpoint()
    if checkpoint is not None:
        state = torch.load(os.path.join(checkpoint.path, "state.pt"))
        model.module.load_state_dict(state["model"]) if hasattr(model, "module") else \
            model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
    x_test, y_test = test_set.tensors
    for epoch in range(start, config["epochs"]):
        if epoch == config.get("fail_at") and checkpoint is None and ctx.world_rank == 1:
            raise RuntimeError(f"injected failure at epoch {epoch}")
        model.train()
        total, count = 0.0, 0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(yb), count + len(yb)
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
        metrics = {"epoch": epoch, "loss": total / count, "test_accuracy": accuracy}
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.world_rank == 0:
                inner = model.module if hasattr(model, "module") else model
                torch.save({"model": inner.state_dict(), "optimizer": optimizer.state_dict(),
                            "epoch": epoch}, os.path.join(tmp, "state.pt"))
                train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
            else:
                train.report(metrics)


def make_trainer(epochs: int, fail_at: int | None, storage: str, verbose: int = 1,
                 name: str = "digits") -> TorchTrainer:
    return TorchTrainer(
        train_loop,
        train_loop_config={"epochs": epochs, "lr": 3e-3, "batch_size": 64, "fail_at": fail_at},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name=name, storage_path=storage,
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=2, checkpoint_score_attribute="test_accuracy"),
                             failure_config=FailureConfig(max_failures=1), verbose=verbose),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fail-at", type=int, default=None)
    parser.add_argument("--storage", default=os.path.join(tempfile.gettempdir(), "hpcray-examples"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    hpcray.init(num_cpus=2)
    result = make_trainer(args.epochs, args.fail_at, args.storage, 0 if args.quiet else 1).fit()
    m = result.metrics
    print(f"test accuracy {m['test_accuracy']:.4f} after {m['epoch'] + 1} epochs "
          f"({m['attempt'] + 1} attempt(s)); latest checkpoint {result.checkpoint.path}")
    print("RESULT", {"accuracy": m["test_accuracy"], "attempts": m["attempt"] + 1,
                     "epochs": m["epoch"] + 1,
                     "checkpoints": sorted(os.path.basename(c.path)
                                           for c, _ in result.best_checkpoints)})


if __name__ == "__main__":
    main()
