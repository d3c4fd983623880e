"""The scheduling policy job of tests/test_core.py: the policy of the driver, a task's
executor, an in-rank actor (the rank itself) and a thread each starts."""

import os
import threading

from jobkit import emit

import hpcray

hpcray.init()


def policies():
    seen = [os.sched_getscheduler(0)]
    thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
    thread.start()
    thread.join()
    return [{os.SCHED_BATCH: "batch", os.SCHED_OTHER: "other"}.get(p, str(p)) for p in seen]


@hpcray.remote
def task():
    return policies(), os.getpid()


@hpcray.remote
class InRank:
    def policies(self):
        return policies(), os.getpid()


actor = InRank.options(in_rank=True).remote()
emit({"driver": policies(),
      "task": hpcray.get(task.remote(), timeout=60)[0],
      "rank": hpcray.get(actor.policies.remote(), timeout=60)[0]})
