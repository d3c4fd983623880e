"""The job of tests/test_actor_options.py: max_pending_calls, concurrency groups and
runtime_env py_modules, each by what a user sees."""

import asyncio
import importlib
import os
import sys
import threading
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



# -- concurrency groups ----------------------------------------------------------------------
class Meter:
    """Counts the calls running at once per group; records each group's peak."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = {}
        self.peak = {}
        self.entered = {}

    def enter(self, group):
        with self.lock:
            self.active[group] = self.active.get(group, 0) + 1
            self.entered[group] = self.entered.get(group, 0) + 1
            self.peak[group] = max(self.peak.get(group, 0), self.active[group])

    def leave(self, group):
        with self.lock:
            self.active[group] -= 1

    def state(self):
        with self.lock:
            return {"entered": dict(self.entered), "peak": dict(self.peak)}


@hpcray.remote(concurrency_groups={"io": 2, "compute": 4})
class Threaded(Meter):
    @hpcray.method(concurrency_group="io")
    def io(self, path):
        self.enter("io")
        try:  # until released, or (a broken limit) until a third io call runs with us
            deadline = time.monotonic() + 60
            while not os.path.exists(path) and self.active["io"] < 3 and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            return self.active["io"]
        finally:
            self.leave("io")

    @hpcray.method(concurrency_group="compute")
    def compute(self, n):
        self.enter("compute")
        try:  # returns True once n compute calls have run at once
            deadline = time.monotonic() + 60
            while self.peak["compute"] < n and time.monotonic() < deadline:
                time.sleep(0.01)
            return self.peak["compute"] >= n
        finally:
            self.leave("compute")

    def default(self):
        return True


@hpcray.remote(concurrency_groups={"io": 2, "compute": 4})
class Async(Meter):
    @hpcray.method(concurrency_group="io")
    async def io(self, path):
        self.enter("io")
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(path) and self.active["io"] < 3 and \
                    time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return self.active["io"]
        finally:
            self.leave("io")

    @hpcray.method(concurrency_group="compute")
    async def compute(self, n):
        self.enter("compute")
        try:
            deadline = time.monotonic() + 60
            while self.peak["compute"] < n and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return self.peak["compute"] >= n
        finally:
            self.leave("compute")

    async def default(self):
        return "default"

    def block_default(self, path):
        """Blocks its group's loop (the default one): other groups run on their own loops."""
        return wait_for(path)


def groups(cls, tag):
    actor = cls.remote()
    release = os.path.join(HERE, f"release-{tag}")
    io = [actor.io.remote(release) for _ in range(3)]
    deadline = time.monotonic() + 60
    while hpcray.get(actor.state.options(concurrency_group="compute").remote(),
                     timeout=60)["entered"].get("io", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # io is full: the compute group and the default group still run
    meanwhile = [hpcray.get(actor.compute.remote(1), timeout=60),
                 hpcray.get(actor.default.remote(), timeout=60) is not None]
    four = hpcray.get([actor.compute.remote(4) for _ in range(4)], timeout=90)
    during = hpcray.get(actor.state.remote(), timeout=60)["entered"]["io"]
    open(release, "w").close()
    done = hpcray.get(io, timeout=60)
    out = {"during": during, "meanwhile": meanwhile, "four": four, "io_max": max(done),
           "peak": hpcray.get(actor.state.remote(), timeout=60)["peak"]}
    if cls is Async:
        blocked = os.path.join(HERE, f"release-{tag}-default")
        stuck = actor.block_default.remote(blocked)
        out["other_loop"] = outcome(lambda: hpcray.get(actor.compute.remote(1), timeout=60))
        open(blocked, "w").close()
        hpcray.get(stuck, timeout=60)
    return out


@hpcray.remote(concurrency_groups={"io": 1})
class Undefined:
    @hpcray.method(concurrency_group="disk")
    def f(self):
        return 1


R["concurrency_groups"] = {
    "threaded": groups(Threaded, "threaded"), "async": groups(Async, "async"),
    "unknown_call": outcome(lambda: Threaded.remote().default.options(
        concurrency_group="nope").remote())[:2],
    "undefined_method_group": outcome(lambda: Undefined.remote())[:2],
    "in_options": outcome(lambda: Threaded.options(concurrency_groups={"x": 1}))[:2],
    "bad": [outcome(lambda v=v: hpcray.remote(concurrency_groups=v)(Meter))[:2]
            for v in ({"io": 0}, {"io": "2"}, ["io"])],
}


# -- runtime_env py_modules --------------------------------------------------------------------
MODS = os.path.join(HERE, "mods")  # not on any rank's sys.path (the script's directory is)
os.makedirs(os.path.join(MODS, "walkpkg"))
with open(os.path.join(MODS, "walkpkg", "__init__.py"), "w") as f:
    f.write("import os\n\ndef answer():\n    return 42\n\n"
            "def where():\n    return [__name__, __file__, os.getpid()]\n")
with open(os.path.join(MODS, "walksingle.py"), "w") as f:
    f.write("VALUE = 'single'\n")
with open(os.path.join(MODS, "walksibling.py"), "w") as f:
    f.write("VALUE = 'sibling'\n")


@hpcray.remote
def use(name, attr):
    module = importlib.import_module(name)
    value = getattr(module, attr)
    return value() if callable(value) else value


@hpcray.remote
class UsesModules:
    def __init__(self):
        import walkpkg

        self.first = walkpkg.answer()

    def value(self):
        import walkpkg
        import walksingle

        return [self.first, walkpkg.answer(), walksingle.VALUE]


PKG, SINGLE = os.path.join(MODS, "walkpkg"), os.path.join(MODS, "walksingle.py")
env = {"py_modules": [PKG, SINGLE]}
sys.path.insert(0, MODS)
import walkpkg  # the driver's own copy: its functions pickle by reference

by_reference = hpcray.remote(walkpkg.answer)
R["py_modules"] = {
    "task": outcome(lambda: hpcray.get([use.options(runtime_env=env).remote("walkpkg", "answer"),
                                        use.options(runtime_env=env).remote("walksingle",
                                                                            "VALUE")],
                                       timeout=60)),
    # only the entries themselves become importable, not what lies next to them
    "sibling": outcome(lambda: hpcray.get(use.options(runtime_env=env).remote(
        "walksibling", "VALUE"), timeout=60))[:2],
    # a module object, and a function of it that travels by reference
    "module_object": outcome(lambda: hpcray.get(by_reference.options(
        runtime_env={"py_modules": [walkpkg]}).remote(), timeout=60)),
    "without": [outcome(lambda: hpcray.get(use.remote("walkpkg", "answer"), timeout=60))[:2]
                for _ in range(3)],
    "actor": outcome(lambda: hpcray.get(UsesModules.options(runtime_env=env).remote()
                                        .value.remote(), timeout=60)),
    "missing": outcome(lambda: use.options(runtime_env={"py_modules": [
        os.path.join(MODS, "nothere")]}))[:2],
    "uri": outcome(lambda: use.options(runtime_env={"py_modules": ["s3://b/m.zip"]}))[:2],
    "not_list": outcome(lambda: use.options(runtime_env={"py_modules": PKG}))[:2],
}

emit(R)
