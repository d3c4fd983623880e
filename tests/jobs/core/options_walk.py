"""Every option hpcray accepts, used for real: its effect, or the error that refuses it."""

import os
import signal
import sys
import time

from jobkit import emit

import hpcray
from hpcray.util import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
    placement_group,
    remove_placement_group,
)

hpcray.init()
HERE = os.getcwd()
R = {}


def record(name, fn):
    print("walk:", name, file=sys.stderr, flush=True)
    try:
        R[name] = ["ok", fn()]
    except Exception as exc:  # noqa: BLE001 - the test reads the kind and the text
        R[name] = [type(exc).__name__, str(exc)]


@hpcray.remote
def ping():
    return os.getpid()


@hpcray.remote
def env_and_cwd(name):
    return [os.environ.get(name), os.getcwd()]


@hpcray.remote
def rank_and_pid():
    rt = hpcray.get_runtime_context()
    return [rt.get_rank(), os.getpid(), rt._rt.ranks[rt.get_rank()].pid]


def first(name):
    path = os.path.join(HERE, name)
    if os.path.exists(path):
        return False
    open(path, "w").close()
    return True


@hpcray.remote
def crash_once(tag):
    if first(tag):
        os.kill(os.getpid(), signal.SIGKILL)
    return "again"


@hpcray.remote
def raise_once(tag):
    if first(tag):
        raise ValueError("first try")
    return "again"


@hpcray.remote
def two():
    return 1, 2


@hpcray.remote
def fails():
    raise KeyError("x")


def get(ref, timeout=60):
    return hpcray.get(ref, timeout=timeout)


# -- resources and placement ---------------------------------------------------------------
record("num_cpus", lambda: get(ping.options(num_cpus=5).remote()))
record("num_gpus", lambda: get(ping.options(num_gpus=1).remote()))
record("resources", lambda: get(ping.options(resources={"widget": 1}).remote()))
record("memory", lambda: get(ping.options(memory=10**18).remote()))
record("accelerator_type", lambda: [get(ping.options(accelerator_type="H200").remote()) > 0,
                                    get(ping.options(accelerator_type="A100").remote())])
record("scheduling_strategy", lambda: get(ping.options(
    scheduling_strategy=NodeAffinitySchedulingStrategy("no-such-node", soft=False)).remote()))
pg = placement_group([{"CPU": 1}, {"CPU": 1}])
hpcray.get(pg.ready(), timeout=60)
record("placement_group", lambda: sorted({get(rank_and_pid.options(
    placement_group=pg, placement_group_bundle_index=i).remote())[0] for i in (0, 1)}))
record("placement_group_bundle_index", lambda: get(rank_and_pid.options(
    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 1)).remote())[0] in (1, 2))
record("placement_group_capture_child_tasks", lambda: ping.options(
    scheduling_strategy=PlacementGroupSchedulingStrategy(
        pg, 0, placement_group_capture_child_tasks=True)).remote())
remove_placement_group(pg)  # its bundles hold every worker CPU
record("label_selector", lambda: ping.options(label_selector={"zone": "a"}).remote())
record("_metadata", lambda: get(ping.options(_metadata={"lib": "x"}).remote()) > 0)

# -- runtime_env: per task, in the task's process only ----------------------------------------
record("runtime_env", lambda: [
    get(env_and_cwd.options(runtime_env={"env_vars": {"WALK_VAR": "set"},
                                         "working_dir": "/tmp"}).remote("WALK_VAR")),
    get(env_and_cwd.remote("WALK_VAR"))])
record("runtime_env_pip", lambda: ping.options(runtime_env={"pip": ["requests"]}).remote())
os.makedirs(os.path.join(HERE, "walkmods"))
with open(os.path.join(HERE, "walkmods", "walkmod.py"), "w") as f:
    f.write("ANSWER = 42\n")


@hpcray.remote
def import_walkmod():
    import walkmod

    return walkmod.ANSWER


record("runtime_env_py_modules", lambda: get(import_walkmod.options(runtime_env={
    "py_modules": [os.path.join(HERE, "walkmods", "walkmod.py")]}).remote()))
record("runtime_env_py_modules_missing", lambda: import_walkmod.options(runtime_env={
    "py_modules": [os.path.join(HERE, "walkmods", "nothere.py")]}))

# -- tasks ------------------------------------------------------------------------------------
record("num_returns", lambda: get(two.options(num_returns=2).remote()))
record("max_retries", lambda: [get(crash_once.options(max_retries=1).remote("crash-a")),
                               get(crash_once.options(max_retries=0).remote("crash-b"))])
record("retry_exceptions", lambda: get(raise_once.options(
    max_retries=1, retry_exceptions=[ValueError]).remote("raise-a")))
record("max_calls", lambda: len({get(ping.options(max_calls=1).remote()) for _ in range(3)}))
record("name", lambda: get(fails.options(name="custom-name").remote()))
record("in_rank", lambda: [get(rank_and_pid.options(in_rank=True).remote()),
                           get(rank_and_pid.remote())])


# -- actors -----------------------------------------------------------------------------------
def meet(tag, n):
    """True once n calls met here (each leaves a file), False after 30 s."""
    open(os.path.join(HERE, f"{tag}-{os.getpid()}-{time.monotonic_ns()}"), "w").close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len([f for f in os.listdir(HERE) if f.startswith(tag)]) >= n:
            return True
        time.sleep(0.01)
    return False


@hpcray.remote
class Box:
    def __init__(self):
        self.calls = 0
        self.pid = os.getpid()

    def where(self):
        self.calls += 1
        rt = hpcray.get_runtime_context()
        return [self.calls, os.getpid(), rt._rt.ranks[rt.get_rank()].pid]

    def env(self, name):
        return os.environ.get(name)

    def meet(self, tag, n):
        return meet(tag, n)

    def two(self):
        return 1, 2

    def flaky(self, tag):
        if first(tag):
            raise ValueError("first try")
        return "again"


named = Box.options(name="walk-box", namespace="walk-ns", lifetime="detached").remote()
get(named.where.remote())
del named
record("lifetime", lambda: get(hpcray.get_actor("walk-box", namespace="walk-ns").where.remote())[0])
record("namespace", lambda: hpcray.get_actor("walk-box"))
record("get_if_exists", lambda: get(Box.options(name="walk-box", namespace="walk-ns",
                                                get_if_exists=True).remote().where.remote())[0])
hpcray.kill(hpcray.get_actor("walk-box", namespace="walk-ns"))
wide = Box.options(max_concurrency=2).remote()
record("max_concurrency", lambda: get([wide.meet.remote("meet", 2) for _ in range(2)]))
again = Box.options(max_restarts=1, max_task_retries=1).remote()
before = get(again.where.remote())
hpcray.kill(again, no_restart=False)
record("max_restarts", lambda: [before, get(again.where.remote())])
record("max_task_retries", lambda: get(again.flaky.options(retry_exceptions=True).remote("m-a")))


def backpressure():
    box = Box.options(max_pending_calls=1).remote()
    first = box.meet.remote("pend", 2)  # runs until a second pend-* file exists
    try:
        box.where.remote()
        refused = None
    except hpcray.exceptions.PendingCallsLimitExceeded as exc:
        refused = type(exc).__name__
    open(os.path.join(HERE, "pend-release"), "w").close()
    return [refused, get(first), get(box.where.remote())[0]]


record("max_pending_calls", backpressure)


@hpcray.remote(concurrency_groups={"io": 2})
class Grouped:
    @hpcray.method(concurrency_group="io")
    def meet_io(self, tag, n):
        return meet(tag, n)

    def meet(self, tag, n):  # the default group: max_concurrency 1
        return meet(tag, n)


grouped = Grouped.remote()
record("concurrency_groups", lambda: get([grouped.meet_io.remote("cg-a", 2) for _ in range(2)]))
record("actor_runtime_env", lambda: get(Box.options(
    runtime_env={"env_vars": {"WALK_ACTOR": "yes"}}).remote().env.remote("WALK_ACTOR")))
record("actor_in_rank", lambda: get(Box.options(in_rank=True).remote().where.remote()))
record("method_num_returns", lambda: get(Box.remote().two.options(num_returns=2).remote()))
record("method_name", lambda: get(Box.remote().where.options(name="named-call").remote())[0])
record("method_retry_exceptions", lambda: get(Box.remote().flaky.options(
    retry_exceptions=[ValueError], max_task_retries=1).remote("m-b")))
record("concurrency_group", lambda: get([grouped.meet.options(concurrency_group="io").remote(
    "cg-b", 2) for _ in range(2)]))
emit(R)
