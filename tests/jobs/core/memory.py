"""The memory job of tests/test_core.py."""


import gc
import os

import numpy as np
import psutil
from jobkit import emit, poll

import hpcray
from hpcray.util import PlacementGroupSchedulingStrategy, placement_group

hpcray.init()
R = {}
MIB = 2**20


def rss():
    """Resident memory plus the node-store segments this process holds: a segment filled
    by pwrite() is held memory that no mapping of this process has touched (yet)."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:hpcray-"):
                held += os.fstat(int(fd)).st_size
        except OSError:
            pass
    return psutil.Process().memory_info().rss + held


@hpcray.remote
def produce(i):
    return np.full(20 * MIB // 8, float(i))


@hpcray.remote
def worker_rss():
    return [hpcray.get_runtime_context().get_rank(), rss()]


@hpcray.remote
def ends(a):
    return float(a[0] + a[-1])


# everything runs in one one-CPU bundle, so on one worker rank
pg = placement_group([{"CPU": 1}])
hpcray.get(pg.ready(), timeout=30)
pinned = PlacementGroupSchedulingStrategy(pg, 0)
probe = worker_rss.options(scheduling_strategy=pinned)
produce_pinned = produce.options(scheduling_strategy=pinned)
ends_pinned = ends.options(scheduling_strategy=pinned)


def settled(read, base, slack):
    """Whether read() - base drops under slack (frees are asynchronous)."""
    return bool(poll(lambda: read() - base < slack, 20))


worker_rank, worker_before = hpcray.get(probe.remote())
driver_before = rss()
peak_worker = peak_driver = 0
checks = []
for i in range(100):  # 100 x 20 MiB results, half fetched by the driver, every ref dropped
    ref = produce_pinned.remote(i)
    if i % 2 == 0:
        value = hpcray.get(ref)
        checks.append(float(value[0] + value[-1]))
        del value
    if i % 10 == 9:
        hpcray.wait([ref], timeout=60)
        peak_worker = max(peak_worker, hpcray.get(probe.remote())[1])
        peak_driver = max(peak_driver, rss())
    del ref
R["checks"] = checks
R["worker"] = [worker_rank, (peak_worker - worker_before) // MIB,
               settled(lambda: hpcray.get(probe.remote())[1], worker_before, 200 * MIB)]
R["driver"] = [(peak_driver - driver_before) // MIB, settled(rss, driver_before, 200 * MIB)]

# a 200 MiB put is held by the driver and freed there once its last ref goes
gc.collect()
base_driver = rss()
big = hpcray.put(np.ones(200 * MIB // 8))
held_driver = (rss() - base_driver) // MIB
first = hpcray.get(ends_pinned.remote(big))
copy = [big]
del big
second = hpcray.get(ends_pinned.remote(copy[0]))  # still alive through the other ref
del copy
R["big"] = [held_driver, first, second, settled(rss, base_driver, 100 * MIB)]

# 12 x 128 MiB puts, each sent to the worker and dropped: the worker's copies are freed
# (it may keep a bounded pool of receive buffers, so its RSS need not shrink to the start)
base_worker = hpcray.get(probe.remote())[1]
peak_worker, seen = 0, []
for i in range(12):
    ref = hpcray.put(np.full(128 * MIB // 8, float(i)))
    seen.append(hpcray.get(ends_pinned.remote(ref)))
    del ref
    peak_worker = max(peak_worker, hpcray.get(probe.remote())[1])
R["received"] = [seen, (peak_worker - base_worker) // MIB]
emit(R)
