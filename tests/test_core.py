"""End-to-end tests of hpcray's core API (tasks, objects, actors) in real MPI jobs.

Each job runs many checks and prints one line ``RESULT <json>`` with what it
observed; the tests compare that against references computed here (seeded
random inputs, pure-Python or numpy recomputation). ``n=3`` gives rank 0
(head + driver) and two 1-CPU worker ranks.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random
import re
import socket
import subprocess
import textwrap

import numpy as np

# Prepended to every job script. Worker ranks run the script up to hpcray.init() too.
PRELUDE = '''
import json
import os
import sys
import time

import hpcray


def emit(result):
    # one write: a worker line the driver forwards meanwhile cannot land inside this one
    sys.stdout.write("RESULT " + json.dumps(result) + "\\n")
    sys.stdout.flush()


def settle_output():
    """Runs one task on every worker rank and waits for it.

    A rank sends its pending output before it runs its next task, so afterwards
    everything workers printed earlier has reached the driver. (Output a rank sends
    after a task's result may otherwise still be in flight when the driver exits.)
    """
    from hpcray.util import (PlacementGroupSchedulingStrategy, placement_group,
                             remove_placement_group)

    workers = hpcray.get_runtime_context().get_world_size() - 1
    pg = placement_group([{"CPU": 1}] * workers)
    hpcray.get(pg.ready(), timeout=30)
    nop = hpcray.remote(lambda: None)
    hpcray.get([nop.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                for i in range(workers)], timeout=30)
    remove_placement_group(pg)


@hpcray.remote
def gate(path, value):
    """Returns value once the file path exists (no timing assumptions in the checks)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def poll(cond, timeout=30.0):
    """cond() once it is truthy, or its last value after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    return cond()


def outcome(fn):
    """["ok", value] or ["err", exception class name, str(exception)]."""
    try:
        return ["ok", fn()]
    except Exception as exc:
        return ["err", type(exc).__name__, str(exc)]
'''


def digest(a) -> list:
    """sha256 of the array's bytes, its dtype and shape (the same code runs in the job)."""
    a = np.asarray(a)
    return [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(), a.dtype.str,
            list(a.shape)]


def make_arrays() -> dict:
    rng = np.random.default_rng(2024)
    return {
        "small": rng.integers(-1000, 1000, size=100, dtype=np.int64),
        "mib": rng.standard_normal(2**17),                                         # 1 MiB
        "big": rng.integers(0, 2**31 - 1, size=50 * 2**20 // 4, dtype=np.int32),  # 50 MiB
        "fortran": np.asfortranarray(rng.standard_normal((300, 500))),
        "strided": rng.standard_normal(2**18)[::3],
        "empty": np.zeros((0, 7), dtype=np.float32),
    }


def regenerate_array(seed: int, n: int):
    return np.random.default_rng(seed).integers(0, 2**31 - 1, size=n, dtype=np.int32)


# The objects job gets the very same helpers, by source.
ARRAYS = "\nimport hashlib\n\nimport numpy as np\n\n\n" + "\n\n".join(
    inspect.getsource(f) for f in (digest, make_arrays, regenerate_array))

BIG_N = 50 * 2**20 // 4


def run(run_job, body: str, **kwargs) -> tuple[dict, subprocess.CompletedProcess]:
    """Runs PRELUDE + body as a job; checks it exited 0 and printed one RESULT line."""
    proc = run_job(PRELUDE + textwrap.dedent(body), **kwargs)
    detail = (f"exit status {proc.returncode}\n--- stdout (tail)\n{proc.stdout[-6000:]}\n"
              f"--- stderr (tail)\n{proc.stderr[-6000:]}")
    assert proc.returncode == 0, detail
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, detail
    return json.loads(lines[0][len("RESULT "):]), proc


def is_error(observed, type_name: str, *texts: str) -> bool:
    """observed is outcome()'s ["err", type_name, message] with every text in the message."""
    return (observed[0] == "err" and observed[1] == type_name
            and all(text in observed[2] for text in texts))


# --------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------

TASKS_JOB = '''
hpcray.init()
R = {}


@hpcray.remote
def combine(a, b=2, *rest, c=3, **kw):
    return [a, b, list(rest), c, sorted(kw.items())]


R["args"] = hpcray.get([
    combine.remote(1),
    combine.remote(1, 5),
    combine.remote(1, 5, 6, 7, c=8, z=9, y="w"),
    combine.remote(a=10, c=11),
    combine.remote(*[4, 5, 6], **{"c": None}),
])


@hpcray.remote
def poly(x):
    return x * x - 3 * x + 7


xs = json.loads(sys.argv[1])
R["poly"] = hpcray.get([poly.remote(x) for x in xs])
R["chain"] = hpcray.get(poly.remote(poly.remote(poly.remote(2))))
R["kwref"] = hpcray.get(combine.remote(poly.remote(1), c=poly.remote(2)))


@hpcray.remote(num_returns=3)
def three(x):
    return x, [x + 1], {"v": x + 2}


refs = three.remote(10)
R["nr3_kind"] = [type(refs).__name__, len(refs),
                 all(isinstance(r, hpcray.ObjectRef) for r in refs)]
R["nr3"] = hpcray.get(refs)
R["nr3_as_1"] = hpcray.get(three.options(num_returns=1).remote(5))
R["nr3_as_2"] = outcome(lambda: hpcray.get(three.options(num_returns=2).remote(5)))


@hpcray.remote
def touch(path):
    with open(path, "w") as f:
        f.write("ran")


marker = os.path.abspath("nr0-marker")
r0 = touch.options(num_returns=0).remote(marker)
R["nr0"] = [r0 is None, bool(poll(lambda: os.path.exists(marker)))]
one = touch.remote(os.path.abspath("nr1-marker"))
R["nr1"] = [type(one).__name__, hpcray.get(one)]
fire = os.path.abspath("fire-and-forget")
touch.remote(fire)  # the ref is dropped at once; the task still runs
R["fire_and_forget"] = bool(poll(lambda: os.path.exists(fire)))
R["named_task"] = outcome(lambda: hpcray.get(
    three.options(num_returns=1, name="custom-task-name").remote(None)))
R["bad_option"] = outcome(lambda: poly.options(not_an_option=1))
R["bad_num_returns"] = outcome(lambda: poly.options(num_returns=-1))
R["bad_remote"] = outcome(lambda: hpcray.remote(1, 2))


# ObjectRefs: resolved at the top level of the arguments, left alone inside containers
@hpcray.remote
def describe(x, lst, d=None, *, k=None):
    inner = lst[0]
    return [type(x).__name__, type(inner).__name__, hpcray.get(inner), type(d).__name__,
            type(k).__name__, type(lst[1]["r"]).__name__, x]


pref = hpcray.put(41)
R["refargs"] = hpcray.get(describe.remote(pref, [poly.remote(3), {"r": pref}], d=pref, k=pref))


@hpcray.remote
def make_ref(v):
    return hpcray.put(v)


outer = hpcray.get(make_ref.remote([1, 2, 3]))
R["returned_ref"] = [type(outer).__name__, hpcray.get(outer)]
R["same_ref_twice"] = hpcray.get([pref, pref]) + hpcray.get((pref,))


# nested tasks two levels deep: 8 + 24 + 72 tasks on 2 CPUs, all but the leaves blocked in get
@hpcray.remote
def leaf(x):
    return 2 * x


@hpcray.remote
def mid(x):
    return sum(hpcray.get([leaf.remote(10 * x + i) for i in range(3)]))


@hpcray.remote
def top(x):
    return sum(hpcray.get([mid.remote(10 * x + i) for i in range(3)]))


R["nested"] = hpcray.get([top.remote(i) for i in range(8)], timeout=90)
emit(R)
'''


def test_tasks(run_job):
    rng = random.Random(1234)
    xs = [rng.randint(-10**9, 10**9) for _ in range(300)]
    r, _ = run(run_job, TASKS_JOB, args=[json.dumps(xs)], timeout=90)

    def poly(x):
        return x * x - 3 * x + 7

    assert r["args"] == [[1, 2, [], 3, []], [1, 5, [], 3, []],
                         [1, 5, [6, 7], 8, [["y", "w"], ["z", 9]]], [10, 2, [], 11, []],
                         [4, 5, [6], None, []]]
    assert r["poly"] == [poly(x) for x in xs]
    assert r["chain"] == poly(poly(poly(2)))
    assert r["kwref"] == [poly(1), 2, [], poly(2), []]

    assert r["nr3_kind"] == ["list", 3, True]
    assert r["nr3"] == [10, [11], {"v": 12}]
    assert r["nr3_as_1"] == [5, [6], {"v": 7}]
    assert is_error(r["nr3_as_2"], "TaskError(ValueError)", "num_returns=2")
    assert r["nr0"] == [True, True]
    assert r["nr1"] == ["ObjectRef", None]
    assert r["fire_and_forget"] is True
    # .options(name=...) names the task in its errors
    assert is_error(r["named_task"], "TaskError(TypeError)", "custom-task-name", "NoneType")
    assert is_error(r["bad_option"], "ValueError", "not_an_option")
    assert is_error(r["bad_num_returns"], "ValueError", "num_returns")
    assert r["bad_remote"][:2] == ["err", "TypeError"]

    assert r["refargs"] == ["int", "ObjectRef", poly(3), "int", "int", "ObjectRef", 41]
    assert r["returned_ref"] == ["ObjectRef", [1, 2, 3]]
    assert r["same_ref_twice"] == [41, 41, 41]

    def mid(x):
        return sum(2 * (10 * x + i) for i in range(3))

    assert r["nested"] == [sum(mid(10 * x + i) for i in range(3)) for x in range(8)]


# --------------------------------------------------------------------------------------------
# wait, get timeouts, cancel, errors, retries
# --------------------------------------------------------------------------------------------

WAIT_ERRORS_JOB = '''
import socket

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
    except Exception as exc:
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
    n = int(open(path).read()) if os.path.exists(path) else 0
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
                           int(open(path_h).read())]
emit(R)
'''


def test_wait_get_timeout_cancel_errors_retries(run_job):
    r, _ = run(run_job, WAIT_ERRORS_JOB, timeout=90)
    # refs = [fast0, slow, fast1, fast2, fast3]: ready ones keep input order, capped at num_returns
    assert r["wait_timeout"] == [[0, 2, 3, 4], [1]]
    assert r["wait_two"] == [[0, 2], [1, 3, 4]]
    assert r["wait_default"] == [[0], [1, 2, 3, 4]]
    assert r["wait_zero_timeout"] == [[], [1]]
    assert r["after_gate"] == ["slow-done", [[0, 1, 2, 3, 4], []]]
    assert is_error(r["get_timeout"], "GetTimeoutError")
    assert is_error(r["get_timeout_list"], "GetTimeoutError")
    assert r["get_timeout_is_timeouterror"] is True
    assert [o[:2] for o in r["bad_args"]] == [
        ["err", "TypeError"], ["err", "ValueError"], ["err", "ValueError"], ["err", "TypeError"],
        ["err", "TypeError"], ["err", "TypeError"], ["err", "TypeError"]]
    assert is_error(r["cancel"][0], "TaskCancelledError")
    assert is_error(r["cancel"][1], "TaskCancelledError")

    host = socket.gethostname()
    assert r["host"] == host
    for key, cls, line, text in [
            ("err_value", "ValueError", 'raise ValueError("bad value 1234")', "bad value 1234"),
            ("err_custom", "MyError", 'raise MyError("custom 99")', "custom 99"),
            ("err_key", "KeyError", '{}["missing-key"]', "missing-key"),
            ("err_dependency", "ValueError", 'raise ValueError("bad value 1234")',
             "bad value 1234")]:
        caught, is_task_error, message, cause, rank, err_host = r[key]
        assert (caught, is_task_error, cause, err_host) == ("caught", True, cls, host), r[key]
        assert rank in (1, 2)
        assert "Traceback (most recent call last)" in message
        assert line in message and text in message and "in fail" in message
        assert f"rank {rank}" in message and host in message
    assert is_error(r["err_in_list"], "TaskError(ValueError)", "bad value 1234")
    assert r["no_err"] == "fine"

    retry = r["retry"]
    assert retry["true"] == ["ok", 3, 3]            # failed twice, retried, succeeded
    assert retry["list_match"] == ["ok", 3, 3]
    assert retry["max5"] == ["ok", 5, 5]
    assert retry["decorator"] == [5, 5]
    for key, count in [("default", 1), ("list_other", 1), ("max1", 2), ("max0", 1)]:
        assert is_error(retry[key], "TaskError(ValueError)", f"attempt {count} failed"), key
        assert retry[key][3] == count, key


# --------------------------------------------------------------------------------------------
# serialization errors, direct calls, runtime context, resources, output forwarding
# --------------------------------------------------------------------------------------------

CONTEXT_JOB = '''
import threading

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
    print(f"two-lines {i}\\nsecond-line {i}")
    print(f"to-stderr {i}", file=sys.stderr)
    return [hpcray.get_runtime_context().get_rank(), os.getpid()]


R["talk"] = hpcray.get([talk.remote(i) for i in range(6)])
settle_output()
emit(R)
'''


def test_serialization_errors_context_resources_output(run_job):
    r, proc = run(run_job, CONTEXT_JOB, timeout=90)
    u = r["unpicklable"]
    # unpicklable arguments, values and globals fail at .remote()/put() with a TypeError
    # that names the function and the offending type
    assert is_error(u["arg"], "TypeError", "square", "_thread.lock")
    assert is_error(u["kwarg"], "TypeError", "square", "_thread.lock")
    assert is_error(u["actor_arg"], "TypeError", "Holder", "_thread.lock")
    assert is_error(u["put"], "TypeError", "_thread.lock")
    assert is_error(u["closure"], "TypeError", "uses_lock", "_thread.lock")
    assert r["warm_up"] == [9, "ActorHandle"]
    assert u["still_works"] == 144
    assert is_error(u["return"], "TaskError(TypeError)", "returns_lock", "_thread.lock")
    assert is_error(u["put_ref"], "TypeError")
    assert is_error(r["direct_call"], "TypeError", "square", ".remote(")

    rank0, node, actor, world, job = r["ctx_driver"]
    assert (rank0, actor, world) == (0, None, 3)
    tasks = r["ctx_tasks"]
    assert {t[0] for t in tasks} <= {1, 2}
    assert all(t[1] == node and t[3] is None and t[5] == 3 and t[6] == job for t in tasks)
    task_ids = [t[2] for t in tasks]
    assert None not in task_ids and len(set(task_ids)) == len(task_ids)
    assert len({t[4] for t in tasks}) <= 2

    assert len(r["nodes"]) == 1
    (info,) = r["nodes"]
    assert info["NodeID"] == node and info["Alive"] is True
    assert sorted(info["Ranks"]) == [0, 1, 2] and info["Resources"]["CPU"] == 2.0
    assert r["cluster"]["CPU"] == 2.0
    assert r["available"] is True

    host = socket.gethostname()
    for i, (rank, pid) in enumerate(r["talk"]):
        assert rank in (1, 2)
        prefix = f"(rank={rank} pid={pid} host={host}) "
        for line in (f"hello-from-task {i}", f"two-lines {i}", f"second-line {i}"):
            assert prefix + line in proc.stdout.splitlines(), (prefix + line, proc.stdout)
        assert prefix + f"to-stderr {i}" in proc.stderr.splitlines(), proc.stderr
    # only the driver's own lines are unprefixed
    unprefixed = [line for line in proc.stdout.splitlines()
                  if line and not re.match(r"\(rank=\d+ pid=\d+ host=\S+\) ", line)]
    assert len(unprefixed) == 1 and unprefixed[0].startswith("RESULT ")


# --------------------------------------------------------------------------------------------
# objects: put/get of numpy arrays, containers, refs inside values, rank-to-rank transfer
# --------------------------------------------------------------------------------------------

OBJECTS_JOB = ARRAYS + '''
from hpcray.util import PlacementGroupSchedulingStrategy, placement_group, remove_placement_group

hpcray.init()
R = {}
arrays = make_arrays()


@hpcray.remote
def describe(a):
    return digest(a) + [int(a.sum()) if a.dtype.kind == "i" else float(a.sum())]


@hpcray.remote
def rank():
    return hpcray.get_runtime_context().get_rank()


@hpcray.remote
def regenerate(seed, n):
    return regenerate_array(seed, n)


refs = {k: hpcray.put(v) for k, v in arrays.items()}
R["local"] = {k: digest(hpcray.get(r)) for k, r in refs.items()}
R["via_ref"] = dict(zip(refs, hpcray.get([describe.remote(r) for r in refs.values()])))
R["via_value"] = dict(zip(arrays, hpcray.get([describe.remote(v) for v in arrays.values()])))
R["returned"] = digest(hpcray.get(regenerate.remote(7, 50 * 2**20 // 4)))
R["small_values"] = hpcray.get([hpcray.put(v) for v in (42, "text", [1, 2.5, None],
                                                        {"k": (1, 2)}, None)])

# the object does not change with the array it was made from (put, or a big argument)
src = arrays["big"].copy()
r_src = hpcray.put(src)
arg_ref = describe.remote(src)
src[:] = 0
R["copy_semantics"] = [digest(hpcray.get(r_src)), hpcray.get(arg_ref)]

# dicts holding arrays
nested = {"a": arrays["small"], "b": [arrays["mib"], "text"], "c": {"big": arrays["big"]}}
nref = hpcray.put(nested)


@hpcray.remote
def describe_nested(d):
    return [digest(d["a"]), digest(d["b"][0]), d["b"][1], digest(d["c"]["big"])]


back = hpcray.get(nref)
R["nested_local"] = [digest(back["a"]), digest(back["b"][0]), back["b"][1],
                     digest(back["c"]["big"])]
R["nested_task"] = hpcray.get(describe_nested.remote(nref))

# refs inside a put value stay refs and keep their objects alive
inner = hpcray.put(arrays["mib"])
holder = hpcray.put({"ref": inner, "refs": [inner, hpcray.put("second")]})
del inner


@hpcray.remote
def unwrap(d):
    return [type(d["ref"]).__name__, digest(hpcray.get(d["ref"])), hpcray.get(d["refs"][1])]


R["ref_in_put_task"] = hpcray.get(unwrap.remote(holder))
h = hpcray.get(holder)
R["ref_in_put_local"] = [type(h["ref"]).__name__, digest(hpcray.get(h["ref"])),
                         hpcray.get(h["refs"][1])]
del h, holder


# an actor holding a ref it got inside a list keeps the object alive after the driver drops it
@hpcray.remote
class Keeper:
    def keep(self, box):
        self.box = box
        return len(box)

    def read(self):
        return digest(hpcray.get(self.box[0]))


keeper = Keeper.remote()
kept = hpcray.put(arrays["mib"] * 2)
hpcray.get(keeper.keep.remote([kept]))
del kept
time.sleep(0.2)
R["kept_by_actor"] = hpcray.get(keeper.read.remote(), timeout=30)

# worker -> worker: produced on one rank, consumed on the other (two one-CPU bundles)
pg = placement_group([{"CPU": 1}, {"CPU": 1}])
hpcray.get(pg.ready(), timeout=30)
on = [PlacementGroupSchedulingStrategy(pg, i) for i in (0, 1)]
produced = regenerate.options(scheduling_strategy=on[0]).remote(11, 50 * 2**20 // 4)
R["w2w"] = [hpcray.get(rank.options(scheduling_strategy=on[0]).remote()),
            hpcray.get(rank.options(scheduling_strategy=on[1]).remote()),
            hpcray.get(describe.options(scheduling_strategy=on[1]).remote(produced)),
            hpcray.get(describe.options(scheduling_strategy=on[0]).remote(produced)),
            digest(hpcray.get(produced))]
remove_placement_group(pg)
emit(R)
'''


def test_objects(run_job):
    r, _ = run(run_job, OBJECTS_JOB, timeout=90)
    arrays = make_arrays()
    expected = {k: digest(v) for k, v in arrays.items()}
    sums = {k: int(v.sum()) if v.dtype.kind == "i" else float(v.sum()) for k, v in arrays.items()}
    assert expected["mib"][2] == [2**17] and expected["big"][2] == [BIG_N]

    assert r["local"] == expected
    for path in ("via_ref", "via_value"):
        for k in arrays:
            assert r[path][k] == expected[k] + [sums[k]], (path, k)
    assert r["returned"] == digest(regenerate_array(7, BIG_N))
    assert r["small_values"] == [42, "text", [1, 2.5, None], {"k": [1, 2]}, None]
    assert r["copy_semantics"] == [expected["big"], expected["big"] + [sums["big"]]]

    nested = [expected["small"], expected["mib"], "text", expected["big"]]
    assert r["nested_local"] == nested
    assert r["nested_task"] == nested
    assert r["ref_in_put_task"] == ["ObjectRef", expected["mib"], "second"]
    assert r["ref_in_put_local"] == ["ObjectRef", expected["mib"], "second"]
    assert r["kept_by_actor"] == digest(arrays["mib"] * 2)

    produced = regenerate_array(11, BIG_N)
    rank_a, rank_b, seen_b, seen_a, seen_driver = r["w2w"]
    assert {rank_a, rank_b} == {1, 2}
    full = digest(produced) + [int(produced.sum())]
    assert seen_a == full and seen_b == full and seen_driver == digest(produced)


# --------------------------------------------------------------------------------------------
# reference counting frees memory on workers and on the driver
# --------------------------------------------------------------------------------------------

MEMORY_JOB = '''
import gc

import numpy as np
import psutil
from hpcray.util import PlacementGroupSchedulingStrategy, placement_group

hpcray.init()
R = {}
MIB = 2**20


def rss():
    return psutil.Process().memory_info().rss


@hpcray.remote
def produce(i):
    return np.full(20 * MIB // 8, float(i))


@hpcray.remote
def worker_rss():
    return [hpcray.get_runtime_context().get_rank(), psutil.Process().memory_info().rss]


@hpcray.remote
def ends(a):
    return float(a[0] + a[-1])


# everything runs in one one-CPU bundle, so on one worker rank
pg = placement_group([{"CPU": 1}])
hpcray.get(pg.ready(), timeout=30)
pinned = PlacementGroupSchedulingStrategy(pg, 0)
probe = worker_rss.options(scheduling_strategy=pinned)
produce_pinned = produce.options(scheduling_strategy=pinned)
ends_pinned = ends.options(scheduling_strategy=pinned)


def settled(read, base, slack):
    """Whether read() - base drops under slack (frees are asynchronous)."""
    return bool(poll(lambda: read() - base < slack, 20))


worker_rank, worker_before = hpcray.get(probe.remote())
driver_before = rss()
peak_worker = peak_driver = 0
checks = []
for i in range(100):  # 100 x 20 MiB results, half fetched by the driver, every ref dropped
    ref = produce_pinned.remote(i)
    if i % 2 == 0:
        value = hpcray.get(ref)
        checks.append(float(value[0] + value[-1]))
        del value
    if i % 10 == 9:
        hpcray.wait([ref], timeout=60)
        peak_worker = max(peak_worker, hpcray.get(probe.remote())[1])
        peak_driver = max(peak_driver, rss())
    del ref
R["checks"] = checks
R["worker"] = [worker_rank, (peak_worker - worker_before) // MIB,
               settled(lambda: hpcray.get(probe.remote())[1], worker_before, 200 * MIB)]
R["driver"] = [(peak_driver - driver_before) // MIB, settled(rss, driver_before, 200 * MIB)]

# a 200 MiB put is held by the driver and freed there once its last ref goes
gc.collect()
base_driver = rss()
big = hpcray.put(np.ones(200 * MIB // 8))
held_driver = (rss() - base_driver) // MIB
first = hpcray.get(ends_pinned.remote(big))
copy = [big]
del big
second = hpcray.get(ends_pinned.remote(copy[0]))  # still alive through the other ref
del copy
R["big"] = [held_driver, first, second, settled(rss, base_driver, 100 * MIB)]

# 12 x 128 MiB puts, each sent to the worker and dropped: the worker's copies are freed
# (it may keep a bounded pool of receive buffers, so its RSS need not shrink to the start)
base_worker = hpcray.get(probe.remote())[1]
peak_worker, seen = 0, []
for i in range(12):
    ref = hpcray.put(np.full(128 * MIB // 8, float(i)))
    seen.append(hpcray.get(ends_pinned.remote(ref)))
    del ref
    peak_worker = max(peak_worker, hpcray.get(probe.remote())[1])
R["received"] = [seen, (peak_worker - base_worker) // MIB]
emit(R)
'''


def test_refcount_frees_memory(run_job):
    r, _ = run(run_job, MEMORY_JOB, timeout=120)
    assert r["checks"] == [2.0 * i for i in range(0, 100, 2)]
    worker_rank, worker_growth, worker_settled = r["worker"]
    assert worker_rank in (1, 2)
    # 100 x 20 MiB = 2000 MiB if nothing were freed
    assert worker_growth < 1024, r
    assert worker_settled is True, r
    driver_growth, driver_settled = r["driver"]
    assert driver_growth < 1024 and driver_settled is True, r
    held_driver, first, second, driver_freed = r["big"]
    assert held_driver >= 150, r  # the object really was stored
    assert first == second == 2.0
    assert driver_freed is True, r
    seen, received_growth = r["received"]
    assert seen == [2.0 * i for i in range(12)]
    assert received_growth < 1024, r  # 1536 MiB if the worker kept every copy


# --------------------------------------------------------------------------------------------
# actors
# --------------------------------------------------------------------------------------------

ACTORS_JOB = '''
import asyncio
import threading

import numpy as np

hpcray.init()
R = {}
E = hpcray.exceptions


@hpcray.remote
def double(x):
    return 2 * x


@hpcray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start
        self.log = []

    def incr(self, k=1):
        self.n += k
        return self.n

    def append(self, item):
        self.log.append(item)
        return len(self.log)

    def get_log(self):
        return self.log

    def fail(self):
        raise ValueError("method failed 77")

    @hpcray.method(num_returns=2)
    def pair(self):
        return self.n, -self.n

    def where(self):
        ctx = hpcray.get_runtime_context()
        return [ctx.get_rank(), ctx.get_actor_id(), ctx.get_task_id(), os.getpid()]

    def call_task(self, x):
        return hpcray.get(double.remote(x))

    def block(self, path):
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "unblocked"


c = Counter.remote(5)
R["state"] = hpcray.get([c.incr.remote() for _ in range(10)] + [c.incr.remote(k=100)])
R["method_error"] = outcome(lambda: hpcray.get(c.fail.remote()))
R["after_error"] = hpcray.get(c.incr.remote())
R["pair"] = [type(c.pair.remote()).__name__, hpcray.get(c.pair.remote())]
R["pair_as_1"] = hpcray.get(c.pair.options(num_returns=1).remote())
R["nested_task"] = hpcray.get(c.call_task.remote(21))
o = Counter.remote()
R["order_returns"] = hpcray.get([o.append.remote(i) for i in range(200)])
R["order_log"] = hpcray.get(o.get_log.remote())
R["direct"] = [outcome(lambda: Counter(1)), outcome(lambda: c.incr(1)),
               outcome(lambda: c.no_such_method)]
R["ctx"] = hpcray.get([c.where.remote(), c.where.remote(), o.where.remote()])

# large arguments to __init__ and methods, large results from methods
@hpcray.remote
class Big:
    def __init__(self, a):
        self.a = a

    def total(self, b):
        return int(self.a.sum() + b.sum())

    def echo(self):
        return self.a


arr = np.arange(2**19, dtype=np.int64)  # 4 MiB
big = Big.remote(arr)
R["big_actor"] = [hpcray.get(big.total.remote(arr)), int(hpcray.get(big.echo.remote()).sum())]
# a handle dropped right after a call: the call still runs
R["dropped_handle"] = hpcray.get(Counter.remote(5).incr.remote())

# a call waiting for its argument still runs before the caller's later calls
dep_gate = os.path.abspath("dep-gate")
d = Counter.remote()
first = d.append.remote(gate.remote(dep_gate, "first"))
second = d.append.remote("second")
open(dep_gate, "w").close()
R["order_with_dependency"] = [hpcray.get([first, second], timeout=60),
                              hpcray.get(d.get_log.remote())]


@hpcray.remote(max_concurrency=4)
class Threaded:
    def __init__(self):
        self.barrier = threading.Barrier(4, timeout=30)
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def meet(self):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            self.barrier.wait()  # passes only if 4 calls run at once
            return threading.get_ident()
        finally:
            with self.lock:
                self.active -= 1

    def get_peak(self):
        return self.peak


t = Threaded.remote()
idents = hpcray.get([t.meet.remote() for _ in range(4)], timeout=60)
R["threaded"] = [len(set(idents)), hpcray.get(t.get_peak.remote())]


@hpcray.remote
class AsyncActor:
    def __init__(self):
        self.active = 0
        self.peak = 0
        self.arrived = 0

    async def meet(self, n):
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.arrived += 1
        deadline = time.monotonic() + 30
        while self.arrived < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.active -= 1
        return self.arrived

    async def fetch(self, refs):
        return await refs[0]

    def sync_peak(self):
        return self.peak


a = AsyncActor.remote()
R["async"] = hpcray.get([a.meet.remote(8) for _ in range(8)], timeout=60)
R["async_peak"] = hpcray.get(a.sync_peak.remote())
R["async_await_ref"] = hpcray.get(a.fetch.remote([double.remote(50)]), timeout=60)

# named actors
named = Counter.options(name="counter-A").remote(100)
h = hpcray.get_actor("counter-A")
R["named"] = [hpcray.get(h.incr.remote()), hpcray.get(named.incr.remote()), h == named]
again = Counter.options(name="counter-A", get_if_exists=True).remote(0)
R["get_if_exists"] = hpcray.get(again.incr.remote())
fresh = Counter.options(name="counter-B", get_if_exists=True).remote(7)
R["get_if_exists_new"] = hpcray.get(fresh.incr.remote())
R["dup_name"] = outcome(lambda: Counter.options(name="counter-A").remote())
R["missing_name"] = outcome(lambda: hpcray.get_actor("no-such-actor"))


# handles passed to tasks
@hpcray.remote
def bump(counter, times):
    return [hpcray.get(counter.incr.remote()) for _ in range(times)]


@hpcray.remote
def bump_in_list(counters):
    return hpcray.get(counters[0].incr.remote(1000))


@hpcray.remote
def bump_named(name):
    return hpcray.get(hpcray.get_actor(name).incr.remote(10))


b = Counter.remote(0)
R["handle_in_task"] = hpcray.get(bump.remote(b, 5))
R["handle_in_list"] = hpcray.get(bump_in_list.remote([b]))
R["named_in_task"] = hpcray.get(bump_named.remote("counter-A"))
R["after_tasks"] = hpcray.get(b.incr.remote())


# __init__ raising: every call, before or after the failure is known, raises ActorDiedError
@hpcray.remote
class Broken:
    def __init__(self):
        raise RuntimeError("init failed 55")

    def m(self):
        return 1


br = Broken.remote()
early = br.m.remote()
R["broken_early"] = outcome(lambda: hpcray.get(early, timeout=30))
R["broken_late"] = outcome(lambda: hpcray.get(br.m.remote(), timeout=30))

# kill: the running call, the queued one and later ones raise ActorDiedError; the name is freed
kill_gate = os.path.abspath("kill-gate")
k = Counter.options(name="to-kill").remote(0)
hpcray.get(k.incr.remote())
in_flight = k.block.remote(kill_gate)
queued = k.incr.remote()
hpcray.kill(k)
R["killed"] = [outcome(lambda: hpcray.get(in_flight, timeout=30)),
               outcome(lambda: hpcray.get(queued, timeout=30)),
               outcome(lambda: hpcray.get(k.incr.remote(), timeout=30)),
               outcome(lambda: hpcray.get_actor("to-kill")),
               outcome(lambda: hpcray.kill("not an actor"))]
open(kill_gate, "w").close()
revived = Counter.options(name="to-kill").remote(1000)
R["name_reused"] = hpcray.get(revived.incr.remote())

# an actor with num_cpus=1 holds a CPU until it is killed or its last handle goes
holder = Counter.options(num_cpus=1).remote()
hpcray.get(holder.incr.remote())
R["cpu_with_holder"] = hpcray.available_resources().get("CPU")
hpcray.kill(holder)
R["cpu_after_kill"] = poll(lambda: hpcray.available_resources().get("CPU") == 2.0, 10)
holder2 = Counter.options(num_cpus=1).remote()
hpcray.get(holder2.incr.remote())
R["cpu_with_holder2"] = hpcray.available_resources().get("CPU")
del holder2
R["cpu_after_del"] = poll(lambda: hpcray.available_resources().get("CPU") == 2.0, 10)


# 40 actors on the 2 worker ranks
@hpcray.remote
class Small:
    def __init__(self, i):
        self.i = i
        self.calls = 0

    def ident(self):
        self.calls += 1
        return [self.i, self.calls, hpcray.get_runtime_context().get_rank()]


many = [Small.remote(i) for i in range(40)]
first = hpcray.get([s.ident.remote() for s in many], timeout=60)
second = hpcray.get([s.ident.remote() for s in many], timeout=60)
R["many"] = [first, second]
emit(R)
'''


def test_actors(run_job):
    r, _ = run(run_job, ACTORS_JOB, timeout=90)
    assert r["state"] == list(range(6, 16)) + [115]
    assert is_error(r["method_error"], "TaskError(ValueError)", "method failed 77", "Counter.fail")
    assert r["after_error"] == 116  # a failing method does not kill the actor
    assert r["pair"] == ["list", [116, -116]]
    assert r["pair_as_1"] == [116, -116]
    assert r["nested_task"] == 42
    assert r["order_returns"] == list(range(1, 201))
    assert r["order_log"] == list(range(200))
    assert is_error(r["direct"][0], "TypeError", "Counter.remote(")
    assert is_error(r["direct"][1], "TypeError", ".incr.remote(")
    assert is_error(r["direct"][2], "AttributeError", "no_such_method")
    (rank1, actor1, task1, pid1), (rank2, actor2, task2, pid2), (_, actor3, _, _) = r["ctx"]
    assert rank1 == rank2 and rank1 in (1, 2) and pid1 == pid2
    assert actor1 == actor2 and actor1 is not None and actor3 not in (None, actor1)
    assert None not in (task1, task2) and task1 != task2
    assert r["order_with_dependency"] == [[1, 2], ["first", "second"]]
    total = (2**19 - 1) * 2**19 // 2
    assert r["big_actor"] == [2 * total, total]
    assert r["dropped_handle"] == 6

    assert r["threaded"] == [4, 4]
    assert r["async"] == [8] * 8 and r["async_peak"] == 8
    assert r["async_await_ref"] == 100

    assert r["named"] == [101, 102, True]
    assert r["get_if_exists"] == 103
    assert r["get_if_exists_new"] == 8
    assert is_error(r["dup_name"], "ValueError", "counter-A")
    assert is_error(r["missing_name"], "ValueError", "no-such-actor")
    assert r["handle_in_task"] == [1, 2, 3, 4, 5]  # calls from one task run in order
    assert r["handle_in_list"] == 1005
    assert r["named_in_task"] == 113
    assert r["after_tasks"] == 1006

    assert is_error(r["broken_early"], "ActorDiedError")
    assert is_error(r["broken_late"], "ActorDiedError")
    for observed in r["killed"][:3]:
        assert is_error(observed, "ActorDiedError"), observed
    assert is_error(r["killed"][3], "ValueError", "to-kill")
    assert is_error(r["killed"][4], "TypeError")
    assert r["name_reused"] == 1001

    assert r["cpu_with_holder"] == 1.0 and r["cpu_after_kill"] is True
    assert r["cpu_with_holder2"] == 1.0 and r["cpu_after_del"] is True

    first, second = r["many"]
    assert [x[:2] for x in first] == [[i, 1] for i in range(40)]
    assert [x[:2] for x in second] == [[i, 2] for i in range(40)]
    assert {x[2] for x in first} <= {1, 2}
    assert [x[2] for x in first] == [x[2] for x in second]  # actors stay where they are


# --------------------------------------------------------------------------------------------
# embedded mode: a plain `python script.py` that calls init(num_cpus=2)
# --------------------------------------------------------------------------------------------

EMBEDDED_JOB = '''
hpcray.init(num_cpus=2)
R = {}


@hpcray.remote
def square(x):
    print(f"embedded-print {x}")
    return [x * x, hpcray.get_runtime_context().get_rank(), os.getpid()]


@hpcray.remote
class Acc:
    def __init__(self):
        self.total = 0

    def add(self, x):
        self.total += x
        return self.total


R["squares"] = hpcray.get([square.remote(i) for i in range(10)])
acc = Acc.remote()
R["acc"] = hpcray.get([acc.add.remote(i) for i in range(10)])
R["cluster"] = hpcray.cluster_resources().get("CPU")
ctx = hpcray.get_runtime_context()
R["driver"] = [ctx.get_rank(), ctx.get_world_size(), os.getpid()]
R["error"] = outcome(lambda: hpcray.get(square.remote("x")))
settle_output()
emit(R)
'''


def test_embedded_mode(run_job):
    r, proc = run(run_job, EMBEDDED_JOB, spawn=True, timeout=90)
    assert [s[0] for s in r["squares"]] == [i * i for i in range(10)]
    assert {s[1] for s in r["squares"]} <= {1, 2}
    assert r["acc"] == [sum(range(i + 1)) for i in range(10)]
    assert r["cluster"] == 2.0
    rank, world, driver_pid = r["driver"]
    assert (rank, world) == (0, 3)
    assert driver_pid not in {s[2] for s in r["squares"]}
    assert is_error(r["error"], "TaskError(TypeError)", "in square")
    host = socket.gethostname()
    for i, (_, rank, pid) in enumerate(r["squares"]):
        assert f"(rank={rank} pid={pid} host={host}) embedded-print {i}" in proc.stdout


def test_preload_imports_before_user_code_on_workers_only(run_job, tmp_path):
    # the module takes a while to import and notes when it finished; tasks must see it done
    (tmp_path / "slow_import.py").write_text("import time\ntime.sleep(1)\ndone = True\n")
    r, proc = run(run_job, """
        import sys
        hpcray.init()

        @hpcray.remote
        def seen():
            module = sys.modules.get("slow_import")
            return [hpcray.get_runtime_context().get_rank(), getattr(module, "done", False)]

        R = {"workers": hpcray.get([seen.remote() for _ in range(4)]),
             "driver": "slow_import" in sys.modules}
        print("RESULT " + json.dumps(R))
    """, env={"HPCRAY_PRELOAD": "slow_import, no_such_module_here"})
    assert {rank for rank, _ in r["workers"]} <= {1, 2}
    assert all(done for _, done in r["workers"])
    assert not r["driver"]
    assert "HPCRAY_PRELOAD: cannot import no_such_module_here" in proc.stderr


# --------------------------------------------------------------------------------------------
# known bugs (each its own small job, so a fix shows up as XPASS)
# --------------------------------------------------------------------------------------------

def test_retry_exceptions_with_class_defined_in_script(run_job):
    r, _ = run(run_job, '''
        hpcray.init()


        class Flaky(Exception):
            pass


        @hpcray.remote
        def flaky(path):
            n = int(open(path).read()) if os.path.exists(path) else 0
            with open(path, "w") as f:
                f.write(str(n + 1))
            if n < 2:
                raise Flaky(f"attempt {n + 1}")
            return n + 1


        ref = flaky.options(retry_exceptions=[Flaky]).remote(os.path.abspath("count"))
        emit({"value": outcome(lambda: hpcray.get(ref, timeout=5))})
    ''', timeout=60)
    assert r["value"] == ["ok", 3]


def test_nested_task_error_keeps_its_class(run_job):
    r, _ = run(run_job, '''
        hpcray.init()


        @hpcray.remote
        def inner():
            raise ValueError("inner failure 31")


        @hpcray.remote
        def outer():
            return hpcray.get(inner.remote())


        try:
            hpcray.get(outer.remote())
            caught = "nothing"
        except ValueError as exc:
            caught = ["ValueError", "inner failure 31" in str(exc)]
        except Exception as exc:
            caught = ["other", type(exc).__name__, type(getattr(exc, "cause", None)).__name__]
        emit({"caught": caught})
    ''')
    assert r["caught"] == ["ValueError", True]


def test_actor_init_error_is_reported(run_job):
    r, _ = run(run_job, '''
        hpcray.init()


        @hpcray.remote
        class Broken:
            def __init__(self):
                raise RuntimeError("init failed 55")

            def m(self):
                return 1


        emit({"err": outcome(lambda: hpcray.get(Broken.remote().m.remote(), timeout=30))})
    ''')
    assert r["err"][:2] == ["err", "ActorDiedError"]
    assert "init failed 55" in r["err"][2]


def test_changing_a_fetched_array_does_not_change_the_object(run_job):
    r, _ = run(run_job, '''
        import numpy as np
        from hpcray.util import PlacementGroupSchedulingStrategy, placement_group

        hpcray.init()
        ref = hpcray.put(np.zeros(2**20))
        value = hpcray.get(ref)
        try:
            value += 1  # raises if the array is read-only, as in Ray
        except ValueError:
            pass
        driver = float(hpcray.get(ref).sum())

        pg = placement_group([{"CPU": 1}])
        hpcray.get(pg.ready())
        on = PlacementGroupSchedulingStrategy(pg, 0)


        @hpcray.remote
        def bump(a):
            try:
                a += 1
            except ValueError:
                pass


        @hpcray.remote
        def total(a):
            return float(a.sum())


        hpcray.get(bump.options(scheduling_strategy=on).remote(ref))
        emit({"driver": driver,
              "worker": hpcray.get(total.options(scheduling_strategy=on).remote(ref))})
    ''')
    assert r == {"driver": 0.0, "worker": 0.0}


def test_wait_on_empty_list(run_job):
    r, _ = run(run_job, '''
        hpcray.init()
        emit({"empty": outcome(lambda: hpcray.wait([]))})
    ''')
    assert r["empty"] == ["ok", [[], []]]


def test_exception_that_cannot_be_unpickled(run_job):
    r, _ = run(run_job, '''
        hpcray.init()


        class TwoArgs(Exception):
            def __init__(self, a, b):
                super().__init__(f"{a}-{b}")


        @hpcray.remote
        def fail():
            raise TwoArgs("left", "right")


        try:
            hpcray.get(fail.remote())
            seen = "nothing"
        except hpcray.exceptions.TaskError as exc:
            seen = ["TaskError", str(exc)]
        except Exception as exc:
            seen = ["other", type(exc).__name__, str(exc)]
        emit({"seen": seen})
    ''')
    assert r["seen"][0] == "TaskError"
    assert "left-right" in r["seen"][1] and "Traceback" in r["seen"][1]


def test_failed_first_submission_leaves_function_usable(run_job):
    r, _ = run(run_job, '''
        import threading

        hpcray.init()


        @hpcray.remote
        def square(x):
            return x * x


        @hpcray.remote
        class Acc:
            def __init__(self, start):
                self.total = start

            def add(self, x):
                self.total += x
                return self.total


        first = [outcome(lambda: square.remote(threading.Lock())),
                 outcome(lambda: Acc.remote(threading.Lock()))]
        emit({"first": [f[:2] for f in first],
              "then": [outcome(lambda: hpcray.get(square.remote(7), timeout=10)),
                       outcome(lambda: hpcray.get(Acc.remote(1).add.remote(2), timeout=10))]})
    ''', timeout=60)
    assert r["first"] == [["err", "TypeError"], ["err", "TypeError"]]
    assert r["then"] == [["ok", 49], ["ok", 3]]


def test_driver_idles_after_large_by_value_arguments(run_job):
    r, _ = run(run_job, '''
        import numpy as np
        import psutil

        hpcray.init()


        @hpcray.remote
        def total(a):
            return float(a.sum())


        me = psutil.Process()


        def idle_cpu(seconds=0.5):
            """CPU seconds the driver process uses while its main thread sleeps."""
            before = sum(me.cpu_times()[:2])
            time.sleep(seconds)
            return round(sum(me.cpu_times()[:2]) - before, 3)


        arr = np.ones(2**17)  # 1 MiB, sent from the driver's own memory
        cpu, sums = [idle_cpu()], []
        for _ in range(3):  # the bad state comes from a race: give it a few chances
            # one at a time, so a CPU is free at each submit and the argument is sent at once
            sums.append(sum(hpcray.get(total.remote(arr)) for _ in range(30)))
            cpu.append(idle_cpu())
            if cpu[-1] > 0.25:
                break
        emit({"sums": sums, "cpu": cpu})
    ''', timeout=90)
    assert all(s == 30 * 2.0**17 for s in r["sums"])
    # an idle head backs off: well under half a core
    assert max(r["cpu"]) < 0.25, r["cpu"]


def test_async_await_futures_and_driver_threads(run_job):
    """Refs are awaitable and have futures; many driver threads may call the API at once."""
    r, _ = run(run_job, '''
        import asyncio
        import threading
        hpcray.init()

        @hpcray.remote
        def double(x):
            return 2 * x

        async def gather():
            return await asyncio.gather(*[double.remote(i) for i in range(20)])

        awaited = asyncio.run(gather())
        futures = [double.remote(i).future() for i in range(20)]
        from_futures = [f.result(timeout=60) for f in futures]
        sums = []

        def driver_thread(k):
            sums.append(sum(hpcray.get([double.remote(k * 100 + i) for i in range(50)])))

        threads = [threading.Thread(target=driver_thread, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

        # futures start no thread; errors and values arrive through callbacks
        @hpcray.remote
        def fail(x):
            raise ValueError(f"no {x}")

        before = threading.active_count()
        pending = [double.remote(i).future() for i in range(300)]
        during = threading.active_count()
        bad = fail.remote(7).future()
        done = []
        pending[0].add_done_callback(lambda f: done.append(f.result()))
        values = [f.result(timeout=60) for f in pending]
        err = bad.exception(timeout=60)

        # an async actor awaiting refs of tasks and of another actor
        @hpcray.remote
        class Adder:
            def add(self, a, b):
                return a + b

        @hpcray.remote
        class Chain:
            def __init__(self, adder):
                self.adder = adder

            async def run(self, x):
                doubled = await double.remote(x)
                try:
                    await fail.remote(x)
                except ValueError as exc:
                    caught = str(exc)
                return await self.adder.add.remote(doubled, 1), caught

        chain = Chain.remote(Adder.remote())
        chained = hpcray.get([chain.run.remote(i) for i in range(10)], timeout=60)
        emit({"awaited": awaited, "futures": from_futures, "sums": sorted(sums),
              "threads": during - before, "values": values == [2 * i for i in range(300)],
              "callback": done, "error": [type(err).__name__, str(err)],
              "chained": chained})
    ''')
    assert r["awaited"] == [2 * i for i in range(20)]
    assert r["futures"] == [2 * i for i in range(20)]
    assert r["sums"] == sorted(sum(2 * (k * 100 + i) for i in range(50)) for k in range(8))
    assert r["threads"] <= 0 and r["values"] is True and r["callback"] == [0]
    assert "ValueError" in r["error"][0] and "no 7" in r["error"][1]
    assert [c[0] for c in r["chained"]] == [2 * i + 1 for i in range(10)]
    assert all(c[1].endswith(f"ValueError: no {i}") for i, c in enumerate(r["chained"]))


def test_timeline_in_a_job(run_job, tmp_path):
    """hpcray.timeline(): every task and actor call, on the rank that ran it, as Chrome trace
    events; errors are recorded too."""
    r, _ = run(run_job, '''
        hpcray.init()

        @hpcray.remote
        def nap(x):
            time.sleep(0.02)
            return x

        @hpcray.remote
        def boom():
            raise ValueError("x")

        @hpcray.remote
        class Acc:
            def add(self, k):
                return k

            async def later(self):
                return 1

        acc = Acc.remote()
        hpcray.get([nap.remote(i) for i in range(8)] + [acc.add.remote(1), acc.later.remote()])
        outcome(lambda: hpcray.get(boom.remote()))
        where = hpcray.get(nap.options(num_cpus=0).remote(hpcray.get_runtime_context().get_rank()))
        events = hpcray.timeline("trace.json")
        with open("trace.json") as f:
            on_disk = json.load(f)
        spans = [e for e in events if e["ph"] == "X"]
        emit({"names": sorted(e["name"] for e in spans), "same": on_disk == events,
              "naps": [e["dur"] for e in spans if e["name"] == "nap"],
              "pids": sorted({e["pid"] for e in spans}),
              "procs": sorted(e["args"]["name"].split(" (")[0] for e in events
                              if e["name"] == "process_name"),
              "cats": sorted({e["cat"] for e in spans}),
              "inside": outcome(lambda: hpcray.get(hpcray.remote(hpcray.timeline).remote()))})
    ''')
    assert r["names"] == sorted(["nap"] * 9 + ["boom", "Acc.__init__", "Acc.add", "Acc.later"])
    assert r["same"] is True and all(d >= 2e4 for d in r["naps"])
    assert r["pids"] == [1, 2] and r["procs"] == ["rank 0: head + driver", "rank 1", "rank 2"]
    assert r["cats"] == ["actor_call", "actor_creation", "task"]
    assert r["inside"][0] == "err" and "on the driver" in r["inside"][2]


def test_trace_events_format():
    from hpcray._private.core import protocol as P
    from hpcray._private.core.timeline import trace_events

    events = {1: [("f", P.NORMAL, 10.0, 10.5, 111, 7), ("A.m", P.ACTOR_CALL, 11.0, 10.9, 222, 8)],
              2: []}
    out = trace_events(events, {1: "rank 1 (n1)"})
    spans = [e for e in out if e["ph"] == "X"]
    assert [(e["name"], e["ts"], e["dur"], e["tid"], e["cat"]) for e in spans] == [
        ("f", 10e6, 0.5e6, 1, "task"), ("A.m", 11e6, 0.0, 2, "actor_call")]
    names = {e["pid"]: e["args"]["name"] for e in out if e["name"] == "process_name"}
    assert names == {1: "rank 1 (n1)", 2: "rank 2"}
    assert spans[0]["args"]["task_id"] == f"{7:016x}"
