"""CuPy batches in a job (on tests/stand_ins' CuPy, put on PYTHONPATH by the test):
map_batches(batch_format="cupy") in tasks, iter_batches(batch_format="cupy") on the driver, and
a trainer shard's iter_batches(device="cuda") in the workers, against numpy references."""

import sys

import cupy
import numpy as np

import hpcray
import hpcray.data as rd
from hpcray import train
from hpcray.train import DataParallelTrainer, RunConfig, ScalingConfig

hpcray.init()
d = sys.argv[1]
rng = np.random.default_rng(11)
x = rng.normal(size=(3000, 4)).astype(np.float32)


def scale_on_gpu(batch: dict) -> dict:
    assert isinstance(batch["data"], cupy.ndarray), type(batch["data"])
    return {"data": batch["data"] * 2.0, "row_sum": batch["data"].sum(axis=1)}


ds = rd.from_numpy(x).repartition(6).map_batches(scale_on_gpu, batch_format="cupy",
                                                  batch_size=256)
host = np.concatenate([b["data"] for b in ds.iter_batches(batch_size=None)])
assert np.allclose(host, 2 * x)  # the tasks' CuPy results came back as host blocks
batches = list(ds.iter_batches(batch_size=500, batch_format="cupy"))
assert all(isinstance(v, cupy.ndarray) for b in batches for v in b.values())
assert np.allclose(np.concatenate([b["row_sum"].get() for b in batches]), x.sum(axis=1),
                   atol=1e-4)
print("OK map_batches and iter_batches with CuPy batches", flush=True)


def loop(config: dict) -> None:
    shard = train.get_dataset_shard("train")
    seen = []
    for batch in shard.iter_batches(batch_size=100, device="cuda", prefetch_batches=2):
        assert isinstance(batch["data"], cupy.ndarray), type(batch["data"])
        seen.append(batch["data"].get())
    train.report({"rows": int(sum(len(s) for s in seen)),
                  "sum": float(np.concatenate(seen).sum())})


trainer = DataParallelTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
                              run_config=RunConfig(storage_path=d, name="run"),
                              datasets={"train": ds})
result = trainer.fit()
assert result.error is None, result.error
assert result.metrics["rows"] == 1500, result.metrics  # worker 0's half: 15 chunks of 100
mine = (np.arange(3000) // 100) % 2 == 0  # chunk c goes to worker c % 2
assert np.isclose(result.metrics["sum"], (2 * x)[mine].sum(), rtol=1e-4), result.metrics
print("OK trainer shards iter_batches(device='cuda')", flush=True)
hpcray.shutdown()
