"""Freed node-store segments are reused, never while a reader still maps them."""

import gc

import numpy as np
from jobkit import emit

import hpcray

hpcray.init()
N = 24 * 2**20  # above the pool's 4 MiB floor


def segments():
    """Node-store segments this process holds (mapped, or kept for reuse): their inodes."""
    import os

    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:hpcray-"):
                found.add(os.fstat(int(fd)).st_ino)
        except OSError:
            pass
    return found


def digest(array):
    return int(array[::997].astype(np.int64).sum())


def fresh(seed):
    return np.random.default_rng(seed).integers(0, 255, N, dtype=np.uint8)


@hpcray.remote
class Keeper:
    """Keeps a zero-copy argument beyond its task: its segment must not be reused."""

    def keep(self, array):
        self.kept = array
        return digest(array)

    def check(self):
        return digest(self.kept)


@hpcray.remote
def total(array):
    return digest(array)


def put_and_read(seed):
    ref = hpcray.put(fresh(seed))
    got = hpcray.get(total.remote(ref), timeout=120)
    del ref
    gc.collect()
    return got


# a driver-side view of its own object outlives the ref
ref = hpcray.put(fresh(1))
view = hpcray.get(ref)
del ref
gc.collect()
# an actor keeps a view of another object
keeper = Keeper.remote()
kept_ref = hpcray.put(fresh(2))
kept_digest = hpcray.get(keeper.keep.remote(kept_ref), timeout=120)
del kept_ref
gc.collect()
results = [put_and_read(seed) == digest(fresh(seed)) for seed in range(10, 16)]
held = len(segments())
emit({
    "results": results,
    "driver_view_intact": digest(view) == digest(fresh(1)),
    "actor_view_intact": hpcray.get(keeper.check.remote(), timeout=120) == kept_digest
    == digest(fresh(2)),
    "objects": 8,
    "segments_held_by_driver": held,
})
