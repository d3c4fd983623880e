"""Port of Ray's test_actor_pool.py."""

from __future__ import annotations

import time

import pytest

import hpcray as ray
from hpcray.util import ActorPool


@ray.remote
class MyActor:
    def f(self, x):
        return x + 1

    def double(self, x):
        return 2 * x

    def slow(self, x):
        time.sleep(x)
        return x


def test_get_next(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote() for _ in range(2)])
    for i in range(5):
        pool.submit(lambda a, v: a.f.remote(v), i)
        assert pool.get_next() == i + 1


def test_get_next_unordered(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote() for _ in range(2)])
    for i in range(5):
        pool.submit(lambda a, v: a.f.remote(v), i)
    results = set()
    while pool.has_next():
        results.add(pool.get_next_unordered())
    assert results == {1, 2, 3, 4, 5}


def test_map(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote() for _ in range(2)])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(20))) == [2 * i for i in range(20)]


def test_map_unordered(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote() for _ in range(2)])
    got = list(pool.map_unordered(lambda a, v: a.double.remote(v), range(20)))
    assert sorted(got) == [2 * i for i in range(20)]


def test_map_gh23107(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote() for _ in range(2)])
    assert list(pool.map(lambda a, v: a.f.remote(v), [1, 2, 3])) == [2, 3, 4]
    assert list(pool.map(lambda a, v: a.f.remote(v), [4, 5])) == [5, 6]


def test_has_next_and_has_free(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote()])
    assert not pool.has_next() and pool.has_free()
    pool.submit(lambda a, v: a.f.remote(v), 1)
    assert pool.has_next() and not pool.has_free()
    assert pool.get_next() == 2
    assert pool.has_free()


def test_get_next_timeout(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote()])
    pool.submit(lambda a, v: a.slow.remote(v), 1)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.1)
    assert pool.get_next() == 1


def test_get_next_unordered_timeout(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote()])
    pool.submit(lambda a, v: a.slow.remote(v), 1)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.1)
    assert pool.get_next_unordered() == 1


def test_get_next_without_work_raises(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote()])
    with pytest.raises(StopIteration):
        pool.get_next()


def test_push_and_pop_idle(ray_start_regular_shared):
    a, b = MyActor.remote(), MyActor.remote()
    pool = ActorPool([a])
    pool.push(b)
    assert pool.pop_idle() is not None
    assert pool.pop_idle() is not None
    assert pool.pop_idle() is None
    pool.push(a)
    assert list(pool.map(lambda x, v: x.f.remote(v), [1])) == [2]


def test_more_work_than_actors_is_queued(ray_start_regular_shared):
    pool = ActorPool([MyActor.remote()])
    for i in range(10):
        pool.submit(lambda a, v: a.f.remote(v), i)
    assert [pool.get_next() for _ in range(10)] == [i + 1 for i in range(10)]


def test_map_with_failing_actor_method(ray_start_regular_shared):
    @ray.remote
    class Fails:
        def f(self, x):
            if x == 2:
                raise ValueError("two")
            return x

    pool = ActorPool([Fails.remote()])
    results = pool.map(lambda a, v: a.f.remote(v), [1, 2, 3])
    assert next(results) == 1
    with pytest.raises(ValueError):
        next(results)
