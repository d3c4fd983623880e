"""The executor reading job of tests/test_core.py: whichever thread of an executor reads its
channel (the main thread between tasks, a thread waiting for its answer, the cancel signal,
or the listener once an object is awaited), every answer reaches its thread, and a cancel
reaches a task running in a reused executor."""

import os
import random
import threading
import time
from pathlib import Path

from jobkit import emit, gate, outcome, poll

import hpcray

hpcray.init()
R = {}
rng = random.Random(int(os.environ.get("SEED", "7")))


@hpcray.remote
def square(x):
    return x * x


@hpcray.remote
def fan(xs):
    """Gets from several threads at once, the main thread too."""
    out = {}

    def one(i, x):
        out[i] = [hpcray.get(square.remote(x)), hpcray.get(hpcray.put(x + 1))]

    threads = [threading.Thread(target=one, args=(i, x)) for i, x in enumerate(xs[1:], 1)]
    for t in threads:
        t.start()
    one(0, xs[0])
    for t in threads:
        t.join()
    return [out[i] for i in range(len(xs))], os.getpid()


batches = [[rng.randint(-1000, 1000) for _ in range(rng.randint(1, 6))] for _ in range(12)]
got = hpcray.get([fan.remote(b) for b in batches], timeout=120)
R["fan"] = [g[0] == [[x * x, x + 1] for x in b] for g, b in zip(got, batches)]
R["fan_pids"] = len({g[1] for g in got})


@hpcray.remote
def leave_waiter(ref_holder, path):
    """Returns at once; a thread of its own gets the object later, while the executor runs
    other tasks or waits for the next one."""
    ref = ref_holder[0]

    def later():
        value = hpcray.get(ref, timeout=60)
        with open(path + ".tmp", "w") as f:
            f.write(str(value))
        os.replace(path + ".tmp", path)

    threading.Thread(target=later, daemon=True).start()
    return os.getpid()


waiter_gate = os.path.abspath("waiter-gate")
paths = [os.path.abspath(f"waiter-{i}") for i in range(2)]
late = [gate.options(num_cpus=0).remote(waiter_gate, 40 + i) for i in range(2)]
hpcray.get([leave_waiter.remote([late[i]], paths[i]) for i in range(2)], timeout=60)
R["between"] = sorted(hpcray.get([square.remote(i) for i in range(20)], timeout=60))
open(waiter_gate, "w").close()
R["waiters"] = [poll(lambda p=p: os.path.exists(p), 60) and Path(p).read_text() for p in paths]


@hpcray.remote
def spin(path, value):
    while not os.path.exists(path):
        time.sleep(0.01)  # in C: only the signal interrupts it at once
    return value


def cancel_running(prior: int) -> list:
    """Cancels a task running in an executor that ran ``prior`` tasks before."""
    hpcray.get([square.remote(i) for i in range(prior)], timeout=60)
    path = os.path.abspath(f"cancel-gate-{prior}")
    ref = spin.remote(path, "finished")
    poll(lambda: hpcray.available_resources().get("CPU", 2) < 2, 10)
    hpcray.cancel(ref)
    result = outcome(lambda: hpcray.get(ref, timeout=30))
    open(path, "w").close()
    return result


R["cancel"] = [cancel_running(rng.randint(0, 8)) for _ in range(4)]


@hpcray.remote
def awaits(x):
    """Waits for an object through a future: the listener thread reads from then on."""
    inner = square.options(num_cpus=0).remote(x)  # (no CPU: all may be busy here)
    return inner.future().result(timeout=30)


R["future"] = hpcray.get([awaits.remote(i) for i in range(6)], timeout=60)
R["after_future"] = [g[0] == [[x * x, x + 1] for x in b] for g, b in zip(
    hpcray.get([fan.remote(b) for b in batches[:4]], timeout=120), batches[:4])]
R["cancel_after_future"] = cancel_running(2)
emit(R)
