"""A worker rank SIGKILLed while it runs a task and holds an actor: the task runs again on
the other rank, the actor (max_restarts=1) comes back there, later work runs
(tests/test_rank_death.py)."""

import os
import time

from jobkit import emit, kill_and_wait, poll

import hpcray

hpcray.init()
HERE = os.getcwd()
GO = os.path.join(HERE, "go")


def rank() -> int:
    return hpcray.get_runtime_context().get_rank()


@hpcray.remote(max_restarts=1, max_task_retries=1)
class Keeper:
    """Runs in its rank (in_rank=True below), so its pid is the rank's."""

    def __init__(self):
        self.total = 0

    def where(self):
        return [rank(), os.getpid()]

    def add(self, n):
        self.total += n
        return [self.total, rank()]


@hpcray.remote(max_retries=2)
def hold(i):
    """Marks where it started, then waits for the driver's go."""
    open(os.path.join(HERE, f"started-{i}-{rank()}"), "w").close()
    while not os.path.exists(GO):
        time.sleep(0.01)
    return [i * i, rank()]


@hpcray.remote
def square(x):
    return [x * x, rank()]


keeper = Keeper.options(in_rank=True).remote()
victim_rank, victim_pid = hpcray.get(keeper.where.remote(), timeout=60)
R = {"victim_rank": victim_rank, "before": hpcray.get(keeper.add.remote(1), timeout=60)}
refs = [hold.remote(i) for i in range(4)]
# one task running on each worker rank (one CPU each), then the victim dies
poll(lambda: {name.rsplit("-", 1)[1] for name in os.listdir(HERE)
              if name.startswith("started-")} == {"1", "2"}, 60)
kill_and_wait(victim_pid)
open(GO, "w").close()
R["held"] = hpcray.get(refs, timeout=60)
R["started_on_victim"] = sorted(int(name.split("-")[1]) for name in os.listdir(HERE)
                                if name.startswith("started-")
                                and name.endswith(f"-{victim_rank}"))
R["restarted"] = hpcray.get(keeper.add.remote(5), timeout=60)  # constructor ran again: 0 + 5
R["after"] = hpcray.get([square.remote(i) for i in range(6)], timeout=60)
emit(R)
