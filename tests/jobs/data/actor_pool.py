"""An actor pool starts with initial_size actors (ActorPoolStrategy(initial_size=) or
concurrency=(min, max, initial)), default min_size: counted by the actors themselves, each
recording its creation in a file."""

import os
import sys
import time
import uuid

import hpcray
import hpcray.data as rd
from hpcray.data import ActorPoolStrategy, DataContext

hpcray.init()
d = sys.argv[1]
# no actor is let go for being idle while the input streams in
DataContext.get_current().actor_pool_idle_timeout_s = 600


class Tag:
    """Records its creation; its calls return once `expect` actors exist, so the pool's
    actors are all built before the dataset ends."""

    def __init__(self, folder: str, expect: int):
        self.folder, self.expect = folder, expect
        open(os.path.join(folder, uuid.uuid4().hex), "w").close()

    def __call__(self, batch: dict) -> dict:
        deadline = time.monotonic() + 30  # a liveness bound: fails when too few are made
        while len(os.listdir(self.folder)) < self.expect and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"id": batch["id"] * 1}


def created(name: str, blocks: int, expect: int, **pool) -> int:
    """Actors made for a map over `blocks` blocks: with at most as many blocks as initial
    actors the pool cannot grow (it grows only when every actor has two calls queued)."""
    folder = os.path.join(d, name)
    os.makedirs(folder)
    ds = rd.range(blocks * 10, override_num_blocks=blocks).map_batches(
        Tag, fn_constructor_args=(folder, expect), **pool)
    assert sorted(r["id"] for r in ds.take_all()) == list(range(blocks * 10))
    n = len(os.listdir(folder))
    assert f"actors {n}" in ds.stats(), ds.stats()
    return n


n = created("strategy", 3, 3, compute=ActorPoolStrategy(min_size=1, max_size=5, initial_size=3))
assert n == 3, n
print("OK ActorPoolStrategy(initial_size=3) starts 3 actors", flush=True)

n = created("tuple", 2, 2, concurrency=(1, 4, 2))
assert n == 2, n
print("OK concurrency=(1, 4, 2) starts 2 actors", flush=True)

n = created("default", 1, 1, compute=ActorPoolStrategy(min_size=1, max_size=4))
assert n == 1, n
print("OK without initial_size the pool starts at min_size", flush=True)
hpcray.shutdown()
