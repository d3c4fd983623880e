"""A training run stops mid-epoch; a new run on a different number of workers resumes from its
checkpoint (the shard's state_dict): checked sample by sample, every row of the epoch is used
exactly once by the checkpointed steps and the resumed run together."""

import glob
import json
import os
import sys
import tempfile

import numpy as np

import hpcray
import hpcray.data as rd
from hpcray import train
from hpcray.train import (
    Checkpoint,
    DataParallelTrainer,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)

hpcray.init()
d = sys.argv[1]
N, B = 1500, 25


def loop(config: dict) -> None:
    shard = train.get_dataset_shard("train")
    ckpt = train.get_checkpoint()
    if ckpt is not None:
        with open(os.path.join(ckpt.path, "data.json")) as f:
            shard.load_state_dict(json.load(f))
    rank = train.get_context().get_world_rank()
    for step, batch in enumerate(shard.iter_batches(batch_size=B)):
        np.save(os.path.join(config["out"], f"{config['run']}_w{rank}_s{step}.npy"), batch["id"])
        if step % 3 == 2:
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "data.json"), "w") as f:
                    json.dump(shard.state_dict(), f)
                train.report({"step": step}, checkpoint=Checkpoint.from_directory(tmp))
        else:
            train.report({"step": step})
        if config["run"] == "a" and step == 7:
            raise RuntimeError("preempted")  # after the checkpoint of step 5


ds = rd.range(N, override_num_blocks=6).random_shuffle(seed=7)
try:
    DataParallelTrainer(loop, train_loop_config={"out": d, "run": "a"},
                        scaling_config=ScalingConfig(num_workers=2),
                        run_config=RunConfig(storage_path=d, name="a",
                                             failure_config=FailureConfig(max_failures=0)),
                        datasets={"train": ds}).fit()
    raise AssertionError("the first run should fail")
except TrainingFailedError:
    pass
latest = max(glob.glob(os.path.join(d, "a", "checkpoint_*")))
second = DataParallelTrainer(loop, train_loop_config={"out": d, "run": "b"},
                             scaling_config=ScalingConfig(num_workers=1),
                             run_config=RunConfig(storage_path=d, name="b"),
                             datasets={"train": ds},
                             resume_from_checkpoint=Checkpoint.from_directory(latest)
                             ).fit()
assert second.error is None, second.error


def ids(run: str, workers: int, steps) -> list:
    return [np.load(os.path.join(d, f"{run}_w{w}_s{s}.npy")) for s in steps
            for w in range(workers)]


before = ids("a", 2, range(6))  # the steps the checkpoint covers (0-5)
n_after = len([f for f in os.listdir(d) if f.startswith("b_w0_")])
after = ids("b", 1, range(n_after))
used = np.concatenate(before + after)
assert len(np.unique(used)) == len(used), "a row was used twice"
assert len(used) > N - B, (len(used), N)  # nothing skipped but the last partial batch
order = np.concatenate([b["id"] for b in ds.iter_batches(batch_size=None)])
assert (np.concatenate(before + after) == order[:len(used)]).all()  # in the dataset's order
print("OK train resume", flush=True)
hpcray.shutdown()
