"""A worker rank SIGKILLed before the other has started any executor: Hydra's SIGUSR1 then
reaches the survivor's process group while its forkserver and resource tracker idle, and the
survivor must still start executors and run the work (tests/test_rank_death.py)."""

import os

from jobkit import emit, kill_and_wait

import hpcray

hpcray.init()


def rank() -> int:
    return hpcray.get_runtime_context().get_rank()


@hpcray.remote
class Victim:
    def where(self):
        return [rank(), os.getpid()]


@hpcray.remote
def square(x):
    return [x * x, rank()]


victim = Victim.options(in_rank=True).remote()  # runs in its rank: its pid is the rank's
victim_rank, victim_pid = hpcray.get(victim.where.remote(), timeout=60)
kill_and_wait(victim_pid)
emit({"victim_rank": victim_rank,
      "after": hpcray.get([square.remote(i) for i in range(6)], timeout=60)})
