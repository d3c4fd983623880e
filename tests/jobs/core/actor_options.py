"""The job of tests/test_actor_options.py: max_pending_calls, concurrency groups and
runtime_env py_modules, each by what a user sees."""

import os
import time

from jobkit import emit, outcome

import hpcray

hpcray.init()
R = {}
E = hpcray.exceptions
HERE = os.getcwd()


def wait_for(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


# -- max_pending_calls ---------------------------------------------------------------------
@hpcray.remote(max_pending_calls=2)
class Gate:
    def block(self, path):
        return wait_for(path)

    def ping(self):
        return os.getpid()


@hpcray.remote
def call_from_task(gate_actor, path):
    """Another process holding the handle: its own count."""
    refs = [gate_actor.block.remote(path) for _ in range(2)]
    third = outcome(lambda: gate_actor.block.remote(path))
    open(path, "w").close()
    return [hpcray.get(refs), third[:2]]


g = Gate.remote()
hpcray.get(g.ping.remote(), timeout=60)
release = os.path.join(HERE, "release-1")
held = [g.block.remote(release) for _ in range(2)]
over = outcome(lambda: g.block.remote(release))
again = outcome(lambda: g.ping.remote())
open(release, "w").close()
hpcray.get(held, timeout=60)
after = hpcray.get([g.ping.remote() for _ in range(2)], timeout=60)
one = Gate.options(max_pending_calls=1).remote()
first = one.block.remote(os.path.join(HERE, "release-2"))
over_one = outcome(lambda: one.ping.remote())
open(os.path.join(HERE, "release-2"), "w").close()
hpcray.get(first, timeout=60)
unlimited = Gate.options(max_pending_calls=-1).remote()
many = [unlimited.block.remote(os.path.join(HERE, "release-3")) for _ in range(10)]
open(os.path.join(HERE, "release-3"), "w").close()
R["max_pending_calls"] = {
    "over": over[:2], "over_text": "max_pending_calls=2" in over[2], "again": again[:2],
    "after": len(after), "over_one": over_one[:2],
    "unlimited": hpcray.get(many, timeout=60).count(True),
    # the task is another process: its count starts at zero while the driver's is full
    "task": hpcray.get(call_from_task.remote(g, os.path.join(HERE, "release-4")), timeout=60),
    "bad": [outcome(lambda v=v: Gate.options(max_pending_calls=v))[:2]
            for v in (-2, "3", 1.5)],
    "subclass": issubclass(E.PendingCallsLimitExceeded, E.RayError),
}

emit(R)
