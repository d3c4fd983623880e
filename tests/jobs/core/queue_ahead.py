"""The queue-ahead job of tests/test_core.py: while every rank is busy, the head sends a rank
the next task to start there when its running one ends. Two 1-CPU worker ranks."""

import os
import random
import time

from jobkit import emit, outcome

import hpcray
from hpcray.exceptions import TaskCancelledError

hpcray.init()
R = {}
PROCESS = os.environ.get("HPCRAY_EXECUTION", "process") == "process"


@hpcray.remote
def work(i, ms):
    time.sleep(ms / 1000)
    return i * i


@hpcray.remote
def half(i):
    return i * 0.5


@hpcray.remote
def where(seconds=0.0):
    time.sleep(seconds)
    return hpcray.get_runtime_context().get_rank()


# 1. many short tasks of two shapes, in random order: every result right
rng = random.Random(11)
refs, expect = [], []
for i in range(300):
    if rng.random() < 0.2:
        refs.append(half.options(num_cpus=0.5).remote(i))
        expect.append(i * 0.5)
    else:
        refs.append(work.remote(i, rng.choice([0, 0, 1, 3])))
        expect.append(i * i)
R["mixed"] = hpcray.get(refs, timeout=120) == expect

# 2. a short task queued behind a long one is given back when the other rank frees
# (thread mode: a task asleep in C cannot be ended, so the long ones run in process mode only)
if PROCESS:
    long_ref = where.remote(600)   # holds one rank
    mid_ref = where.remote(0.5)    # the other, briefly
    short_ref = where.remote()     # both busy: waits behind one of them
    ready, _ = hpcray.wait([short_ref], timeout=30)
    R["not_stuck"] = [bool(ready), hpcray.get(mid_ref) == hpcray.get(short_ref) if ready else None]
    R["long_still_running"] = not hpcray.wait([long_ref], timeout=0)[0]

    # 3. cancel a task waiting behind another: it fails at once, the rank goes on
    other_long = where.remote(600)    # now both ranks hold a long task
    queued = work.remote(5, 0)
    time.sleep(0.3)
    hpcray.cancel(queued)
    R["cancelled"] = outcome(lambda: hpcray.get(queued, timeout=60))
    for ref in (long_ref, other_long):
        hpcray.cancel(ref, force=True)
    R["after_cancel"] = hpcray.get([work.remote(i, 0) for i in range(20)], timeout=60) == \
        [i * i for i in range(20)]


# 4. tasks that wait on tasks they submit: the inner ones queue behind their outer ones,
# and start when those block in get() (else this would never end)
@hpcray.remote
def outer(i):
    return hpcray.get(work.remote(i, 1)) + 1


R["nested"] = hpcray.get([outer.remote(i) for i in range(8)], timeout=120) == \
    [i * i + 1 for i in range(8)]


# 5. a task that crashes its executor with tasks queued behind it: it is retried, they run
@hpcray.remote(max_retries=2)
def crash_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "retried"


marker = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"hpcray-qa-{os.getpid()}")
try:
    if PROCESS:  # (in thread mode the crash would be the rank's)
        refs = [crash_once.remote(marker)] + [work.remote(i, 2) for i in range(30)]
        R["crash"] = hpcray.get(refs, timeout=120) == ["retried"] + [i * i for i in range(30)]
finally:
    if os.path.exists(marker):
        os.remove(marker)
R["cancelled_type"] = TaskCancelledError.__name__
emit(R)
