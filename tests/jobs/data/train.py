"""A trainer's datasets= and get_dataset_shard: each worker streams an equal, disjoint shard
every epoch, and together the shards cover the dataset (the remainder
dropped: under a batch per worker)."""

import os
import sys

import numpy as np

import hpcray
import hpcray.data as rd
from hpcray import train
from hpcray.train import DataParallelTrainer, RunConfig, ScalingConfig

hpcray.init()
d = sys.argv[1]
N, WORKERS, EPOCHS = 1001, 2, 2


def loop(config: dict) -> None:
    shard = train.get_dataset_shard("train")
    rank = train.get_context().get_world_rank()
    for epoch in range(config["epochs"]):
        ids = [b["id"] for b in shard.iter_batches(batch_size=64)]
        np.save(os.path.join(config["dir"], f"w{rank}_e{epoch}.npy"), np.concatenate(ids))
        train.report({"epoch": epoch, "rows": int(sum(len(i) for i in ids))})


ds = rd.range(N, override_num_blocks=5).random_shuffle(seed=4).map_batches(
    lambda b: {"id": b["id"]})
trainer = DataParallelTrainer(loop, train_loop_config={"dir": d, "epochs": EPOCHS},
                              scaling_config=ScalingConfig(num_workers=WORKERS),
                              run_config=RunConfig(storage_path=d, name="run"),
                              datasets={"train": ds})
result = trainer.fit()
assert result.error is None, result.error
for epoch in range(EPOCHS):
    parts = [np.load(os.path.join(d, f"w{r}_e{epoch}.npy")) for r in range(WORKERS)]
    assert len(parts[0]) == len(parts[1]) and 2 * len(parts[0]) > N - WORKERS * 64, [
        len(p) for p in parts]
    allids = np.concatenate(parts)
    assert len(np.unique(allids)) == len(allids)
    assert set(allids) <= set(range(N))
print("OK train shards", flush=True)
hpcray.shutdown()
