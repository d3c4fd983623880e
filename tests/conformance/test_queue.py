"""Port of Ray's test_queue.py."""

from __future__ import annotations

import pytest

import hpcray as ray
from hpcray.exceptions import GetTimeoutError
from hpcray.util.queue import Empty, Full, Queue


@ray.remote
def async_get(queue):
    return queue.get(block=True)


@ray.remote
def async_put(queue, item):
    return queue.put(item, block=True)


def test_simple_usage(ray_start_regular_shared):
    q = Queue()
    for item in range(10):
        q.put(item)
    assert [q.get() for _ in range(10)] == list(range(10))


def test_get(ray_start_regular_shared):
    q = Queue()
    q.put(0)
    assert q.get(block=False) == 0
    q.put(1)
    assert q.get(timeout=0.2) == 1
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(timeout=0.2)


def test_put(ray_start_regular_shared):
    q = Queue(1)
    q.put(0, block=False)
    assert q.get() == 0
    q.put(1, timeout=0.2)
    assert q.get() == 1
    with pytest.raises(ValueError):
        q.put(0, timeout=-1)
    q.put(0)
    with pytest.raises(Full):
        q.put_nowait(1)
    with pytest.raises(Full):
        q.put(1, timeout=0.2)


def test_async_get(ray_start_regular_shared):
    q = Queue()
    future = async_get.remote(q)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(GetTimeoutError):
        ray.get(future, timeout=0.1)  # a get timeout does not cancel the task
    q.put(1)
    assert ray.get(future, timeout=60) == 1


def test_async_put(ray_start_regular_shared):
    q = Queue(1)
    q.put(1)
    future = async_put.remote(q, 2)
    with pytest.raises(Full):
        q.put_nowait(3)
    with pytest.raises(GetTimeoutError):
        ray.get(future, timeout=0.1)
    assert q.get() == 1
    assert q.get(timeout=60) == 2


def test_concurrent_producers_consumers(ray_start_regular_shared):
    q = Queue()
    items = set(range(10))
    consumers = [async_get.remote(q) for _ in items]
    for item in items:
        q.put(item)
    assert set(ray.get(consumers, timeout=60)) == items


def test_qsize(ray_start_regular_shared):
    q = Queue()
    for size, item in enumerate(range(10), start=1):
        q.put(item)
        assert q.qsize() == size == q.size()
    for size in range(9, -1, -1):
        q.get()
        assert q.qsize() == size


def test_empty_and_full(ray_start_regular_shared):
    q = Queue(2)
    assert q.empty() and not q.full()
    q.put(1)
    assert not q.empty() and not q.full()
    q.put(2)
    assert q.full()


def test_put_nowait_batch(ray_start_regular_shared):
    q = Queue(1)
    with pytest.raises(Full):
        q.put_nowait_batch([1, 2])
    assert q.empty()  # nothing was put
    q = Queue()
    q.put_nowait_batch(list(range(5)))
    assert [q.get() for _ in range(5)] == list(range(5))


def test_get_nowait_batch(ray_start_regular_shared):
    q = Queue()
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(1) == [3]
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)


def test_custom_actor_options(ray_start_regular_shared):
    q = Queue(actor_options={"num_cpus": 0})
    q.put(1)
    assert q.get() == 1


def test_queue_passed_to_actor(ray_start_regular_shared):
    @ray.remote
    class Producer:
        def fill(self, queue, n):
            for i in range(n):
                queue.put(i)

    q = Queue()
    ray.get(Producer.remote().fill.remote(q, 5))
    assert [q.get() for _ in range(5)] == list(range(5))


def test_shutdown(ray_start_regular_shared):
    q = Queue()
    actor = q.actor
    q.shutdown()
    assert q.actor is None
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.empty.remote())
