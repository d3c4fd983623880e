"""The context job of tests/test_core.py."""

import os
import sys
import threading

from jobkit import emit, outcome, poll, settle_output

import hpcray

hpcray.init()
R = {}


@hpcray.remote
def square(x):
    return x * x


lock = threading.Lock()


@hpcray.remote
def uses_lock():
    return lock.locked()


@hpcray.remote
def returns_lock():
    return threading.Lock()


@hpcray.remote
class Holder:
    def __init__(self, thing):
        self.thing = thing


# each is submitted once successfully first: a failed *first* submission is another matter
# (test_failed_first_submission_leaves_function_usable)
R["warm_up"] = [hpcray.get(square.remote(3)), type(Holder.remote(1)).__name__]
R["unpicklable"] = {
    "arg": outcome(lambda: square.remote(lock)),
    "kwarg": outcome(lambda: square.remote(x=[1, lock])),
    "actor_arg": outcome(lambda: Holder.remote(lock)),
    "put": outcome(lambda: hpcray.put({"lock": lock})),
    "closure": outcome(lambda: uses_lock.remote()),
    "still_works": hpcray.get(square.remote(12)),
    "return": outcome(lambda: hpcray.get(returns_lock.remote())),
    "put_ref": outcome(lambda: hpcray.put(hpcray.put(1))),
}
R["direct_call"] = outcome(lambda: square(3))


@hpcray.remote
def where():
    ctx = hpcray.get_runtime_context()
    return [ctx.get_rank(), ctx.get_node_id(), ctx.get_task_id(), ctx.get_actor_id(),
            os.getpid(), ctx.get_world_size(), ctx.get_job_id()]


ctx = hpcray.get_runtime_context()
R["ctx_driver"] = [ctx.get_rank(), ctx.get_node_id(), ctx.get_actor_id(),
                   ctx.get_world_size(), ctx.get_job_id()]
R["ctx_tasks"] = hpcray.get([where.remote() for _ in range(8)])
R["nodes"] = hpcray.nodes()
R["cluster"] = hpcray.cluster_resources()
R["available"] = poll(lambda: hpcray.available_resources().get("CPU") == 2.0, 10)


@hpcray.remote
def talk(i):
    print(f"hello-from-task {i}")
    print(f"two-lines {i}\nsecond-line {i}")
    print(f"to-stderr {i}", file=sys.stderr)
    return [hpcray.get_runtime_context().get_rank(), os.getpid()]


R["talk"] = hpcray.get([talk.remote(i) for i in range(6)])
settle_output()
emit(R)
