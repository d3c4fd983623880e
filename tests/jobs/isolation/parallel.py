"""CPU-bound Python tasks on one rank with 2 CPUs run in parallel processes (no shared GIL)."""

import os
import time

from jobkit import emit

import hpcray

hpcray.init()
HERE = os.getcwd()


@hpcray.remote
def spin(i, n):
    """Burns CPU until every one of the n tasks has started (a file each), then reports."""
    open(os.path.join(HERE, f"started-{i}"), "w").close()
    deadline = time.monotonic() + 60
    x = 0
    while time.monotonic() < deadline:
        x += sum(range(1000))  # pure Python: holds its interpreter's GIL
        if all(os.path.exists(os.path.join(HERE, f"started-{j}")) for j in range(n)):
            return [os.getpid(), hpcray.get_runtime_context().get_rank(), True]
    return [os.getpid(), hpcray.get_runtime_context().get_rank(), False]


emit({"tasks": hpcray.get([spin.remote(i, 2) for i in range(2)], timeout=90),
      "ranks": hpcray.get_runtime_context().get_world_size()})
