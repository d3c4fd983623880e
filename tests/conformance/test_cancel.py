"""Port of Ray's test_cancel.py (non-force cancel; force cancel is in test_failures.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

import hpcray as ray
from hpcray.exceptions import GetTimeoutError, RayTaskError, TaskCancelledError

from .ray_test_utils import SignalActor, wait_for_condition


@ray.remote
def wait_for(refs):
    return ray.get(refs[0])


def test_cancel_chain(ray_start_regular):
    signal = SignalActor.remote()
    obj1 = wait_for.remote([signal.wait.remote()])
    obj2 = wait_for.remote([obj1])
    obj3 = wait_for.remote([obj2])
    obj4 = wait_for.remote([obj3])
    assert ray.wait([obj1], timeout=0.1)[0] == []
    ray.cancel(obj1)
    for ref in (obj1, obj2, obj3, obj4):
        with pytest.raises((TaskCancelledError, RayTaskError)):
            ray.get(ref, timeout=30)
    ray.get(signal.send.remote())


def test_cancel_running_task(ray_start_regular):
    @ray.remote
    def spin():
        while True:
            time.sleep(0.01)

    ref = spin.remote()
    assert ray.wait([ref], timeout=0.2)[0] == []
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=30)


def test_cancel_queued_task(ray_start_regular):
    signal = SignalActor.remote()

    @ray.remote
    def blocked(_):
        return 1

    gate = signal.wait.remote()
    ref = blocked.remote(gate)  # waits on its argument: not started
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=30)
    ray.get(signal.send.remote())


@ray.remote
def spin_forever():
    while True:
        time.sleep(0.01)


def test_cancel_many_pending(ray_start_regular):
    sleeper = spin_forever

    refs = [sleeper.remote() for _ in range(10)]
    for ref in refs:
        ray.cancel(ref)
    for ref in refs:
        with pytest.raises(TaskCancelledError):
            ray.get(ref, timeout=30)


def test_cancel_finished_task_is_noop(ray_start_regular):
    @ray.remote
    def done():
        return 5

    ref = done.remote()
    assert ray.get(ref) == 5
    ray.cancel(ref)
    assert ray.get(ref) == 5


def test_cancel_recursive_cancels_children(ray_start_regular):
    signal = SignalActor.remote()

    @ray.remote
    def child():
        ray.get(signal.wait.remote())

    @ray.remote
    def parent():
        ref = child.remote()
        ray.get(ref)

    outer = parent.remote()
    wait_for_condition(lambda: ray.get(signal.cur_num_waiters.remote()) == 1)
    ray.cancel(outer, recursive=True)
    with pytest.raises(TaskCancelledError):
        ray.get(outer, timeout=30)
    ray.get(signal.send.remote())


def test_wait_after_cancel_is_ready(ray_start_regular):
    ref = spin_forever.remote()
    ray.cancel(ref)
    ready, _ = ray.wait([ref], timeout=30)
    assert ready == [ref]


def test_cancel_async_actor_task(ray_start_regular):
    @ray.remote
    class Async:
        async def sleep(self):
            await asyncio.sleep(1000)

        async def ping(self):
            return "pong"

    a = Async.remote()
    ref = a.sleep.remote()
    assert ray.wait([ref], timeout=0.2)[0] == []
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=5)
    assert ray.get(a.ping.remote()) == "pong"


def test_cancel_actor_task_force_raises_value_error(ray_start_regular):
    @ray.remote
    class A:
        def f(self):
            return 1

    a = A.remote()
    ref = a.f.remote()
    with pytest.raises(ValueError):
        ray.cancel(ref, force=True)


def test_cancel_queued_actor_task(ray_start_regular):
    signal = SignalActor.remote()

    @ray.remote
    class Serial:
        def block(self, s):
            ray.get(s.wait.remote())
            return "first"

        def after(self):
            return "after"

    a = Serial.remote()
    first = a.block.remote(signal)
    queued = a.after.remote()
    ray.cancel(queued)
    ray.get(signal.send.remote())
    assert ray.get(first, timeout=30) == "first"
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=30)


def test_cancel_remote_from_task(ray_start_regular):
    @ray.remote
    class Async:
        async def sleep(self):
            await asyncio.sleep(1000)

    @ray.remote
    def canceller(refs):
        ray.cancel(refs[0])

    a = Async.remote()
    ref = a.sleep.remote()
    ray.get(canceller.remote([ref]))
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=5)


def test_get_timeout_does_not_cancel(ray_start_regular):
    signal = SignalActor.remote()
    ref = wait_for.remote([signal.wait.remote()])
    with pytest.raises(GetTimeoutError):
        ray.get(ref, timeout=0.1)
    ray.get(signal.send.remote())
    assert ray.get(ref, timeout=30) is None


def test_cancel_interrupts_blocking_sleep(ray_start_regular):
    @ray.remote
    def sleeper():
        time.sleep(15)

    ref = sleeper.remote()
    assert ray.wait([ref], timeout=0.2)[0] == []
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=5)
