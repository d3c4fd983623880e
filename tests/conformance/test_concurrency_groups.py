"""Port of Ray's test_concurrency_group.py, and of test_back_pressure (max_pending_calls)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import hpcray as ray

from .ray_test_utils import Semaphore


def test_basic(ray_start_regular_shared):
    """Each group's methods run on that group's own event loop and thread."""

    @ray.remote(concurrency_groups={"io": 2, "compute": 4})
    class AsyncActor:
        def __init__(self):
            self.eventloop_f1 = None
            self.eventloop_f2 = None
            self.eventloop_f3 = None
            self.eventloop_f4 = None
            self.default_eventloop = asyncio.get_event_loop()

        @ray.method(concurrency_group="io")
        async def f1(self):
            self.eventloop_f1 = asyncio.get_event_loop()
            return threading.current_thread().ident

        @ray.method(concurrency_group="io")
        def f2(self):
            self.eventloop_f2 = asyncio.get_event_loop()
            return threading.current_thread().ident

        @ray.method(concurrency_group="compute")
        def f3(self):
            self.eventloop_f3 = asyncio.get_event_loop()
            return threading.current_thread().ident

        @ray.method(concurrency_group="compute")
        def f4(self):
            self.eventloop_f4 = asyncio.get_event_loop()
            return threading.current_thread().ident

        def f5(self):
            assert asyncio.get_event_loop() == self.default_eventloop
            return threading.current_thread().ident

        @ray.method(concurrency_group="io")
        def do_assert(self):
            return (self.eventloop_f1 == self.eventloop_f2
                    and self.eventloop_f3 == self.eventloop_f4
                    and self.eventloop_f1 != self.eventloop_f3
                    and self.eventloop_f1 != self.eventloop_f4)

    a = AsyncActor.remote()
    f1_thread_id = ray.get(a.f1.remote())
    f2_thread_id = ray.get(a.f2.remote())
    f3_thread_id = ray.get(a.f3.remote())
    f4_thread_id = ray.get(a.f4.remote())
    assert f1_thread_id == f2_thread_id
    assert f3_thread_id == f4_thread_id
    assert f1_thread_id != f3_thread_id
    assert ray.get(a.do_assert.remote())
    assert ray.get(a.f5.remote())
    # the group given at call time
    assert ray.get(a.f2.options(concurrency_group="compute").remote()) == f3_thread_id


def test_async_methods_in_concurrency_group(ray_start_regular_shared):
    @ray.remote(concurrency_groups={"async": 3})
    class AsyncBatcher:
        def __init__(self):
            self.batch = []
            self.event = None

        @ray.method(concurrency_group="async")
        def init_event(self):
            self.event = asyncio.Event()
            return True

        @ray.method(concurrency_group="async")
        async def add(self, x):
            self.batch.append(x)
            if len(self.batch) >= 3:
                self.event.set()
            else:
                await self.event.wait()
            return sorted(self.batch)

    a = AsyncBatcher.remote()
    ray.get(a.init_event.remote())
    x1, x2, x3 = a.add.remote(1), a.add.remote(2), a.add.remote(3)
    r1, r2, r3 = ray.get(x1), ray.get(x2), ray.get(x3)
    assert r1 == [1, 2, 3]
    assert r1 == r2 == r3


def test_default_concurrency_group_does_not_block_others(ray_start_regular_shared):
    @ray.remote(concurrency_groups={"my_group": 1})
    class AsyncActor:
        async def f1(self):
            time.sleep(10000)  # noqa: ASYNC251 - blocking the loop is the point
            return "never return"

        @ray.method(concurrency_group="my_group")
        def f2(self):
            return "ok"

    async_actor = AsyncActor.remote()
    async_actor.f1.remote()
    assert ray.get(async_actor.f2.remote()) == "ok"
    ray.kill(async_actor)  # (not in Ray's test: ends the sleeping process now)


def test_blocking_group_does_not_block_others(ray_start_regular_shared):
    @ray.remote(concurrency_groups={"group1": 1, "group2": 1})
    class AsyncActor:
        @ray.method(concurrency_group="group1")
        async def f1(self):
            time.sleep(10000)  # noqa: ASYNC251 - blocking the loop is the point
            return "never return"

        @ray.method(concurrency_group="group2")
        def f2(self):
            return "ok"

    async_actor = AsyncActor.remote()
    obj_0 = async_actor.f1.remote()
    obj_1 = async_actor.f1.remote()
    ray.wait([obj_0, obj_1], timeout=5)
    assert ray.get(async_actor.f2.remote()) == "ok"
    ray.kill(async_actor)


def test_back_pressure(ray_start_regular):
    signal_actor = Semaphore.options(max_pending_calls=10).remote(value=0)
    for _ in range(10):
        signal_actor.acquire.remote()
    with pytest.raises(ray.exceptions.PendingCallsLimitExceeded):
        signal_actor.acquire.remote()

    @ray.remote
    def release(signal_actor):
        ray.get(signal_actor.release.remote())
        return 1

    # released through tasks: the driver's own calls are held back
    for _ in range(10):
        ray.get(release.remote(signal_actor))
    signal_actor.acquire.remote()  # accepted again
