"""prefetch_batches on a dataset and on trainer shards (iter_batches and iter_torch_batches):
while the consumer holds a batch, its iterator's thread fetches exactly prefetch_batches blocks
ahead, and the rows still come in their order."""

import re
import sys
import time

import numpy as np

import hpcray
import hpcray.data as rd
from hpcray import train
from hpcray.train import DataParallelTrainer, RunConfig, ScalingConfig

N, B, WORKERS = 4000, 16, 2
AHEAD = re.compile(r"up to (\d+) blocks fetched ahead of the one in use \((\d+) now\)")


def wait_ahead(it, depth: int) -> None:
    """Until the iterator is depth blocks ahead (a liveness bound, not a timing check); then it
    must not have been further ahead at any time."""
    deadline = time.monotonic() + 60
    while True:
        most, now = map(int, AHEAD.search(it.stats()).groups())
        if now == depth:
            assert most == depth, it.stats()
            return
        assert time.monotonic() < deadline, f"never {depth} blocks ahead: {it.stats()}"
        time.sleep(0.01)


def consume(it, depth: int, torch_batches: bool = False) -> np.ndarray:
    if torch_batches:
        gen = it.iter_torch_batches(batch_size=B, prefetch_batches=depth)
    else:
        gen = it.iter_batches(batch_size=B, prefetch_batches=depth)
    first = next(gen)
    wait_ahead(it, depth)
    ids = [np.asarray(b["id"]) for b in [first, *gen]]
    assert AHEAD.search(it.stats()).group(1) == str(depth), it.stats()
    return np.concatenate(ids)


def loop(config: dict) -> None:
    shard = train.get_dataset_shard("train")
    w = train.get_context().get_world_rank()
    ids = np.arange(N)
    expect = ids[(ids // B) % WORKERS == w]  # chunk c of the epoch goes to worker c % n
    for depth, torch_batches in [(0, False), (3, False), (2, True)]:
        got = consume(shard, depth, torch_batches)
        assert (got == expect).all(), (w, depth, got[:40])
    train.report({"ok": 1})


hpcray.init()
d = sys.argv[1]
ds = rd.range(N, override_num_blocks=40).map_batches(lambda b: {"id": b["id"] * 1})

# the driver's own iteration over the dataset
it = ds.iterator()
assert (consume(it, 4) == np.arange(N)).all()
assert "Operator" in it.stats()  # the dataset's operators, then the iterator's line

trainer = DataParallelTrainer(loop, scaling_config=ScalingConfig(num_workers=WORKERS),
                              run_config=RunConfig(storage_path=d, name="run"),
                              datasets={"train": ds})
result = trainer.fit()
assert result.error is None, result.error
print("OK prefetch", flush=True)
hpcray.shutdown()
