"""HDF5 -> map_batches -> TorchTrainer: each training worker streams its own shard.

The features and labels are two datasets of one HDF5 file. read_hdf5 plans a read task per
hyperslab of rows (cut at chunk boundaries); each task opens the file itself, so the data goes
from the file system to the worker ranks and never through the driver. map_batches normalizes
in the same task (fused with the read). The trainer hands each worker an equal shard
(streaming_split); a seeded shuffle reorders the rows every run.

    python examples/data_hdf5_pipeline.py            (a local job of 3 worker ranks)
    hpcray run -n 4 examples/data_hdf5_pipeline.py
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

import hpcray
import hpcray.data
from hpcray import train
from hpcray.train import RunConfig, ScalingConfig
from hpcray.train.torch import TorchTrainer, prepare_model


def make_file(path: str, n: int = 20_000, d: int = 16) -> None:
    import h5py

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(n, d)).astype(np.float32)
    w = rng.normal(size=d)
    y = ((x - 3.0) / 2.0 @ w > 0).astype(np.int64)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=x, chunks=(1000, d))
        f.create_dataset("labels", data=y, chunks=(1000,))


def normalize(batch: dict) -> dict:
    return {"x": (batch["features"] - 3.0) / 2.0, "y": batch["labels"]}


def train_loop(config: dict) -> None:
    import torch

    model = prepare_model(torch.nn.Linear(config["d"], 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    shard = train.get_dataset_shard("train")
    for epoch in range(config["epochs"]):
        correct = seen = 0
        for batch in shard.iter_torch_batches(batch_size=256, dtypes={"x": torch.float32}):
            logits = model(batch["x"])
            loss = torch.nn.functional.cross_entropy(logits, batch["y"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == batch["y"]).sum())
            seen += len(batch["y"])
        train.report({"epoch": epoch, "rows": seen, "accuracy": correct / seen})


def main() -> None:
    hpcray.init(num_cpus=3)  # 2 training workers + a rank for the read tasks
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.h5")
        make_file(path)
        ds = hpcray.data.read_hdf5(path, datasets=["features", "labels"]).map_batches(
            normalize).random_shuffle(seed=0)
        trainer = TorchTrainer(train_loop, train_loop_config={"d": 16, "epochs": 3},
                               scaling_config=ScalingConfig(num_workers=2),
                               run_config=RunConfig(storage_path=tmp, name="hdf5"),
                               datasets={"train": ds})
        result = trainer.fit()
    print("final metrics:", result.metrics)
    # each worker: half the rows, less under one batch (the equal split drops the remainder)
    assert 10_000 - 256 < result.metrics["rows"] <= 10_000 and result.metrics["accuracy"] > 0.9
    hpcray.shutdown()


if __name__ == "__main__":
    main()
