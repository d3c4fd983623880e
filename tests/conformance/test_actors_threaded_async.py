"""Port of Ray's test_threaded_actor.py and test_asyncio.py (async actors)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import hpcray as ray


def test_threaded_actor_runs_calls_concurrently(ray_start_regular_shared):
    @ray.remote(max_concurrency=3)
    class Threaded:
        def __init__(self):
            self.barrier = threading.Barrier(3, timeout=30)

        def meet(self):
            self.barrier.wait()  # passes only when 3 calls run at once
            return threading.get_ident()

    t = Threaded.remote()
    idents = ray.get([t.meet.remote() for _ in range(3)])
    assert len(set(idents)) == 3


def test_threaded_actor_max_concurrency_through_options(ray_start_regular_shared):
    @ray.remote
    class Gate:
        def __init__(self):
            self.event = threading.Event()

        def wait(self):
            return self.event.wait(30)

        def open(self):
            self.event.set()

    g = Gate.options(max_concurrency=2).remote()
    waiting = g.wait.remote()
    ray.get(g.open.remote())  # would deadlock with one thread
    assert ray.get(waiting) is True


def test_threaded_actor_shared_state_is_consistent(ray_start_regular_shared):
    @ray.remote(max_concurrency=4)
    class Counter:
        def __init__(self):
            self.lock = threading.Lock()
            self.n = 0

        def inc(self):
            with self.lock:
                self.n += 1
            return self.n

        def get(self):
            return self.n

    c = Counter.remote()
    ray.get([c.inc.remote() for _ in range(200)])
    assert ray.get(c.get.remote()) == 200


def test_async_actor_basic(ray_start_regular_shared):
    @ray.remote
    class Async:
        async def double(self, x):
            await asyncio.sleep(0)
            return 2 * x

    a = Async.remote()
    assert ray.get([a.double.remote(i) for i in range(10)]) == [2 * i for i in range(10)]


def test_async_actor_runs_calls_concurrently(ray_start_regular_shared):
    @ray.remote
    class Rendezvous:
        def __init__(self):
            self.arrived = 0
            self.event = asyncio.Event()

        async def meet(self, n):
            self.arrived += 1
            if self.arrived == n:
                self.event.set()
            await asyncio.wait_for(self.event.wait(), 30)
            return self.arrived

    r = Rendezvous.remote()
    assert ray.get([r.meet.remote(20) for _ in range(20)]) == [20] * 20


def test_async_actor_max_concurrency_limits(ray_start_regular_shared):
    @ray.remote(max_concurrency=2)
    class Limited:
        def __init__(self):
            self.running = 0
            self.peak = 0

        async def work(self):
            self.running += 1
            self.peak = max(self.peak, self.running)
            await asyncio.sleep(0.01)
            self.running -= 1

        async def peak_(self):
            return self.peak

    a = Limited.remote()
    ray.get([a.work.remote() for _ in range(10)])
    assert ray.get(a.peak_.remote()) <= 2


def test_async_actor_awaits_object_refs(ray_start_regular_shared):
    @ray.remote
    def value(x):
        return x + 1

    @ray.remote
    class Awaiter:
        async def run(self, x):
            first = await value.remote(x)
            both = await asyncio.gather(value.remote(first), value.remote(0))
            return first, both

    assert ray.get(Awaiter.remote().run.remote(1)) == (2, [3, 1])


def test_async_actor_exception(ray_start_regular_shared):
    @ray.remote
    class Raises:
        async def fail(self):
            raise KeyError("k")

        async def ok(self):
            return "ok"

    r = Raises.remote()
    with pytest.raises(KeyError):
        ray.get(r.fail.remote())
    assert ray.get(r.ok.remote()) == "ok"


def test_async_actor_with_sync_method(ray_start_regular_shared):
    @ray.remote
    class Mixed:
        def sync(self):
            return "sync"

        async def async_(self):
            return "async"

    m = Mixed.remote()
    assert ray.get([m.sync.remote(), m.async_.remote()]) == ["sync", "async"]


def test_async_actor_init_and_state(ray_start_regular_shared):
    @ray.remote
    class Store:
        def __init__(self):
            self.data = {}

        async def set(self, k, v):
            self.data[k] = v

        async def get(self, k):
            return self.data.get(k)

    s = Store.remote()
    ray.get([s.set.remote(i, i * i) for i in range(10)])
    assert ray.get([s.get.remote(i) for i in range(10)]) == [i * i for i in range(10)]


def test_async_actor_runtime_context(ray_start_regular_shared):
    @ray.remote
    class Ctx:
        async def actor_id(self):
            return ray.get_runtime_context().get_actor_id()

    assert ray.get(Ctx.remote().actor_id.remote()) is not None


def test_async_actor_concurrent_sleeps(ray_start_regular_shared):
    @ray.remote
    class Sleeper:
        def __init__(self):
            self.done = 0

        async def nap(self, s):
            await asyncio.sleep(s)
            self.done += 1
            return s

        async def count(self):
            return self.done

    s = Sleeper.remote()
    refs = [s.nap.remote(0.05) for _ in range(10)]
    assert ray.get(refs, timeout=60) == [0.05] * 10
    assert ray.get(s.count.remote()) == 10


def test_driver_asyncio_get_of_actor_results(ray_start_regular_shared):
    @ray.remote
    class A:
        def f(self, x):
            return x

    a = A.remote()

    async def main():
        return await asyncio.gather(*[a.f.remote(i) for i in range(5)])

    assert asyncio.run(main()) == list(range(5))
