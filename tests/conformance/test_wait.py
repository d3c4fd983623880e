"""Port of Ray's test_wait.py (and the wait tests of test_basic*.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import hpcray as ray

from .ray_test_utils import SignalActor


@ray.remote
def f(delay):
    time.sleep(delay)


def test_wait(ray_start_regular_shared):
    refs = [f.remote(0) for _ in range(4)]
    ready, remaining = ray.wait(refs)
    assert len(ready) == 1 and len(remaining) == 3
    ready, remaining = ray.wait(refs, num_returns=4)
    assert set(ready) == set(refs) and remaining == []


def test_wait_timeout_returns_what_is_ready(ray_start_regular_shared):
    signal = SignalActor.remote()
    blocked = signal.wait.remote()
    done = f.remote(0)
    ray.get(done)
    ready, remaining = ray.wait([blocked, done], num_returns=2, timeout=0.5)
    assert ready == [done] and remaining == [blocked]
    ray.get(signal.send.remote())
    ray.get(blocked)


def test_wait_timeout_zero(ray_start_regular_shared):
    signal = SignalActor.remote()
    blocked = signal.wait.remote()
    ready, remaining = ray.wait([blocked], timeout=0)
    assert ready == [] and remaining == [blocked]
    ray.get(signal.send.remote())


def test_wait_on_put_objects(ray_start_regular_shared):
    refs = [ray.put(i) for i in range(5)]
    ready, remaining = ray.wait(refs, num_returns=5, timeout=None)
    assert ready == refs and remaining == []


def test_wait_keeps_input_order(ray_start_regular_shared):
    refs = [ray.put(i) for i in range(10)]
    ready, remaining = ray.wait(refs, num_returns=4)
    assert ready == refs[:4] and remaining == refs[4:]


def test_wait_empty_list(ray_start_regular_shared):
    ready, remaining = ray.wait([])
    assert ready == [] and remaining == []


def test_wait_duplicate_refs_raise(ray_start_regular_shared):
    x = ray.put(1)
    with pytest.raises(ValueError):
        ray.wait([x, x])


def test_wait_num_returns_too_large_raises(ray_start_regular_shared):
    with pytest.raises(ValueError):
        ray.wait([ray.put(1)], num_returns=2)


def test_wait_non_list_raises(ray_start_regular_shared):
    x = ray.put(1)
    with pytest.raises(TypeError):
        ray.wait(x)
    with pytest.raises(TypeError):
        ray.wait(1)


def test_wait_failed_task_is_ready(ray_start_regular_shared):
    @ray.remote
    def fail():
        raise ValueError("x")

    ref = fail.remote()
    ready, _ = ray.wait([ref], timeout=30)
    assert ready == [ref]
    with pytest.raises(ValueError):
        ray.get(ref)


def test_wait_fetch_local_argument(ray_start_regular_shared):
    refs = [f.remote(0) for _ in range(3)]
    ready, remaining = ray.wait(refs, num_returns=3, fetch_local=False)
    assert set(ready) == set(refs) and remaining == []


def test_wait_many_numpy_objects(ray_start_regular_shared):
    @ray.remote
    def arr(i):
        return np.full(1000, i)

    refs = [arr.remote(i) for i in range(20)]
    ready, _ = ray.wait(refs, num_returns=20)
    assert [int(a[0]) for a in ray.get(ready)] == [refs.index(r) for r in ready]
