"""The wait errors job of tests/test_core.py."""

import os
import socket
from pathlib import Path

from jobkit import emit, gate, outcome, poll

import hpcray

hpcray.init()
R = {"host": socket.gethostname()}
E = hpcray.exceptions


@hpcray.remote
def square(x):
    return x * x


gate_path = os.path.abspath("gate-open")
fast = [square.remote(i) for i in range(4)]
slow = gate.remote(gate_path, "slow-done")
refs = [fast[0], slow, fast[1], fast[2], fast[3]]
hpcray.get(fast)
pos = {r: i for i, r in enumerate(refs)}


def positions(split):
    ready, not_ready = split
    return [[pos[r] for r in ready], [pos[r] for r in not_ready]]


R["wait_timeout"] = positions(hpcray.wait(refs, num_returns=5, timeout=0.3))
R["wait_two"] = positions(hpcray.wait(refs, num_returns=2))
R["wait_default"] = positions(hpcray.wait(refs))
R["wait_zero_timeout"] = positions(hpcray.wait([slow], timeout=0))
R["get_timeout"] = outcome(lambda: hpcray.get(slow, timeout=0.3))
R["get_timeout_list"] = outcome(lambda: hpcray.get([fast[0], slow], timeout=0))
try:
    hpcray.get(slow, timeout=0.1)
except TimeoutError as exc:
    R["get_timeout_is_timeouterror"] = isinstance(exc, E.GetTimeoutError)
R["bad_args"] = [
    outcome(lambda: hpcray.wait(slow)),
    outcome(lambda: hpcray.wait([slow, slow])),
    outcome(lambda: hpcray.wait(refs, num_returns=6)),
    outcome(lambda: hpcray.wait([slow, 3])),
    outcome(lambda: hpcray.get("not a ref")),
    outcome(lambda: hpcray.get([slow, "x"])),
    outcome(lambda: hpcray.cancel("not a ref")),
]

# cancel: one task running (blocked on the gate), one queued behind the two busy CPUs
cancel_gate = os.path.abspath("cancel-gate")
running = gate.remote(cancel_gate, "running")
poll(lambda: hpcray.available_resources().get("CPU", 0) == 0, 10)
queued = gate.remote(cancel_gate, "queued")
hpcray.cancel(queued)
hpcray.cancel(running)
R["cancel"] = [outcome(lambda: hpcray.get(queued, timeout=30)),
               outcome(lambda: hpcray.get(running, timeout=30))]
open(cancel_gate, "w").close()
open(gate_path, "w").close()
R["after_gate"] = [hpcray.get(slow, timeout=60),
                   positions(hpcray.wait(refs, num_returns=5, timeout=60))]


# errors come back as TaskError that is also an instance of the task's exception class
class MyError(Exception):
    pass


@hpcray.remote
def fail(kind):
    if kind == "value":
        raise ValueError("bad value 1234")
    if kind == "custom":
        raise MyError("custom 99")
    if kind == "key":
        return {}["missing-key"]
    return kind


def catch(ref, cls):
    try:
        hpcray.get(ref)
    except cls as exc:
        return ["caught", isinstance(exc, E.TaskError), str(exc), type(exc.cause).__name__,
                exc.rank, exc.host]
    except Exception as exc:  # noqa: BLE001 - reported as the wrong error class
        return ["other", type(exc).__name__, str(exc)]
    return ["no error"]


R["err_value"] = catch(fail.remote("value"), ValueError)
R["err_custom"] = catch(fail.remote("custom"), MyError)
R["err_key"] = catch(fail.remote("key"), LookupError)
R["err_dependency"] = catch(square.remote(fail.remote("value")), ValueError)
R["err_in_list"] = outcome(lambda: hpcray.get([square.remote(2), fail.remote("value")]))
R["no_err"] = hpcray.get(fail.remote("fine"))


# retries, counted in a file: the task fails its first `failures` attempts
def flaky_impl(path, failures):
    n = int(Path(path).read_text()) if os.path.exists(path) else 0
    n += 1
    with open(path, "w") as f:
        f.write(str(n))
    if n <= failures:
        raise ValueError(f"attempt {n} failed")
    return n


flaky = hpcray.remote(flaky_impl)


def attempts(opts, failures, tag):
    path = os.path.abspath(f"counter-{tag}")
    res = outcome(lambda: hpcray.get(flaky.options(**opts).remote(path, failures), timeout=60))
    return res + [int(open(path).read())]


flaky_decorated = hpcray.remote(max_retries=5, retry_exceptions=True)(flaky_impl)
R["retry"] = {
    "true": attempts({"retry_exceptions": True}, 2, "a"),
    "default": attempts({}, 2, "b"),
    "list_match": attempts({"retry_exceptions": [ValueError]}, 2, "c"),
    "list_other": attempts({"retry_exceptions": [KeyError]}, 2, "d"),
    "max1": attempts({"retry_exceptions": True, "max_retries": 1}, 2, "e"),
    "max0": attempts({"retry_exceptions": True, "max_retries": 0}, 2, "f"),
    "max5": attempts({"retry_exceptions": True, "max_retries": 5}, 4, "g"),
}
path_h = os.path.abspath("counter-h")
R["retry"]["decorator"] = [hpcray.get(flaky_decorated.remote(path_h, 4), timeout=60),
                           int(Path(path_h).read_text())]
emit(R)
