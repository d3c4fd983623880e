"""A dataset ~20x bigger than the per-operator budget streams through map_batches to a slow
consumer with the job's memory (all ranks' RSS, sampled) staying near the budget."""

import sys
import threading
import time

import numpy as np
import psutil

import hpcray
import hpcray.data as rd
from hpcray.data import DataContext

BUDGET = 48 * 2**20
ROWS, SHAPE = 2048, (64, 1024)  # 512 KiB a row: 1 GiB in all, 16 MiB blocks
hpcray.init()
budget = float(sys.argv[1]) if len(sys.argv) > 1 else BUDGET
ctx = DataContext.get_current()
ctx.execution_options.resource_limits.object_store_memory = budget
ctx.max_tasks_in_flight_per_op = 64  # only the byte budget holds the producers back

me = psutil.Process()
ranks = [p for p in me.parent().children() if "python" in p.name()] or [me]
peak = [0]
done = threading.Event()


def sample() -> None:
    while not done.is_set():
        total = 0
        for p in ranks:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak[0] = max(peak[0], total)
        time.sleep(0.02)


# warm up: workers import numpy and hpcray.data
rd.range(8).map_batches(lambda b: b).take_all()
base = sum(p.memory_info().rss for p in ranks)
threading.Thread(target=sample, daemon=True).start()
ds = rd.range_tensor(ROWS, shape=SHAPE, override_num_blocks=64).map_batches(
    lambda b: {"x": b["data"] * 2}, batch_size=None)
seen = 0
for batch in ds.iter_batches(batch_size=64, prefetch_batches=1):
    seen += len(batch["x"])
    time.sleep(0.05)  # a consumer slower than the producers
done.set()
growth = (peak[0] - base) / 2**20
data = ROWS * np.prod(SHAPE) * 8 / 2**20
print(f"ranks={len(ranks)} data={data:.0f} MiB budget={budget / 2**20:.0f} MiB "
      f"peak growth={growth:.0f} MiB", flush=True)
assert seen == ROWS
assert growth < 500, growth  # every block made at once would be > 1000 MiB
print("OK backpressure", flush=True)
hpcray.shutdown()

