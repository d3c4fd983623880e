"""A training run is interrupted mid-epoch and restarted by the trainer from its latest
checkpoint; the loop saves and loads only its own epoch counter, and the dataset shards'
positions travel in the checkpoint by themselves. Checked row by row: over the steps the
checkpoints cover and the resumed run's, every row is used exactly once per epoch, in the
dataset's order."""

import glob
import json
import os
import sys
import tempfile

import numpy as np

import hpcray
import hpcray.data as rd
from hpcray import train
from hpcray.train import Checkpoint, DataParallelTrainer, FailureConfig, RunConfig, ScalingConfig

hpcray.init()
d = sys.argv[1]
N, B, EPOCHS, WORKERS = 600, 20, 2, 2  # 15 batches per worker per epoch


def loop(config: dict) -> None:
    out = config["out"]
    rank = train.get_context().get_world_rank()
    attempt = len(glob.glob(os.path.join(out, f"started_w{rank}_*")))
    open(os.path.join(out, f"started_w{rank}_{attempt}"), "w").close()
    shard = train.get_dataset_shard("train")
    start = 0
    ckpt = train.get_checkpoint()
    if ckpt is not None:
        with open(os.path.join(ckpt.path, "loop.json")) as f:
            saved = json.load(f)
        start = saved["epoch"]
        with open(os.path.join(out, f"resumed_w{rank}.json"), "w") as f:
            json.dump(saved, f)
    for epoch in range(start, EPOCHS):
        for step, batch in enumerate(shard.iter_batches(batch_size=B)):
            np.save(os.path.join(out, f"a{attempt}_e{epoch}_w{rank}_s{step}.npy"), batch["id"])
            if step % 4 == 3:
                with tempfile.TemporaryDirectory() as tmp:
                    with open(os.path.join(tmp, "loop.json"), "w") as f:
                        json.dump({"epoch": epoch, "step": step}, f)
                    train.report({"step": step}, checkpoint=Checkpoint.from_directory(tmp))
            else:
                train.report({"step": step})
            if attempt == 0 and epoch == 1 and step == 9:
                raise RuntimeError("preempted")


ds = rd.range(N, override_num_blocks=5).random_shuffle(seed=11)
result = DataParallelTrainer(loop, train_loop_config={"out": d},
                             scaling_config=ScalingConfig(num_workers=WORKERS),
                             run_config=RunConfig(storage_path=d, name="run",
                                                  failure_config=FailureConfig(max_failures=1)),
                             datasets={"train": ds}).fit()
assert result.error is None, result.error
with open(os.path.join(d, "resumed_w0.json")) as f:
    resumed = json.load(f)
with open(os.path.join(d, "resumed_w1.json")) as f:
    assert json.load(f) == resumed
order = np.concatenate([b["id"] for b in ds.iter_batches(batch_size=None)])
assert sorted(order.tolist()) == list(range(N))


def batches(attempt: int, epoch: int, steps) -> list:
    return [np.load(os.path.join(d, f"a{attempt}_e{epoch}_w{w}_s{s}.npy")) for s in steps
            for w in range(WORKERS)]


for epoch in range(EPOCHS):
    last = 14 if epoch < resumed["epoch"] else resumed["step"] if epoch == resumed["epoch"] \
        else -1
    used = batches(0, epoch, range(last + 1))  # the steps the checkpoint covers
    if epoch >= resumed["epoch"]:
        n_after = len(glob.glob(os.path.join(d, f"a1_e{epoch}_w0_s*.npy")))
        used += batches(1, epoch, range(n_after))
    used = np.concatenate(used)
    assert len(used) == N and len(np.unique(used)) == N, (epoch, len(used), N)
    assert (used == order).all(), epoch  # chunk k*n+i is worker i's batch k, resumed or not
print("OK train autoresume", flush=True)
hpcray.shutdown()
