"""The actors job of tests/test_core.py."""

import asyncio
import os
import threading
import time

import numpy as np
from jobkit import emit, gate, outcome, poll

import hpcray

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
