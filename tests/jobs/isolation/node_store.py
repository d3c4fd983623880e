"""Large objects live in node-shared memory: every reader on the node maps the one copy."""

import numpy as np
from jobkit import emit

import hpcray
from hpcray.util import PlacementGroupSchedulingStrategy, placement_group

hpcray.init()
N = 256 * 2**20


def mapping_of(array):
    """The /proc/self/maps entry holding the array's memory (its path, or "anonymous")."""
    ptr = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= ptr < hi:
                return fields[5] if len(fields) > 5 else "anonymous"
    return None


@hpcray.remote
def produce(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, N, dtype=np.uint8)


@hpcray.remote
def read(array):
    return [hpcray.get_runtime_context().get_rank(), mapping_of(array), int(array[::4096].sum()),
            array.flags.writeable]


pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
hpcray.get(pg.ready(), timeout=60)
on = [PlacementGroupSchedulingStrategy(pg, i) for i in range(2)]
made = produce.options(scheduling_strategy=on[0]).remote(7)
local = hpcray.get(made, timeout=120)
expected = int(np.random.default_rng(7).integers(0, 255, N, dtype=np.uint8)[::4096].sum())
emit({
    "expected": expected,
    "driver": [mapping_of(local), int(local[::4096].sum()), local.flags.writeable],
    "same_rank": hpcray.get(read.options(scheduling_strategy=on[0]).remote(made), timeout=120),
    "other_rank": hpcray.get(read.options(scheduling_strategy=on[1]).remote(made), timeout=120),
    "from_driver": hpcray.get(read.options(scheduling_strategy=on[1]).remote(
        hpcray.put(np.arange(N // 8, dtype=np.int64))), timeout=120)[1],
})
