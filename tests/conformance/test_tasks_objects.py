"""Port of Ray's test_basic.py / test_basic_2.py / test_advanced.py: tasks and objects."""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
import pytest

import hpcray as ray


@ray.remote
def identity(x):
    return x


@ray.remote(num_returns=3)
def three():
    return 1, 2, 3


def test_simple_remote_call(ray_start_regular_shared):
    @ray.remote
    def add(a, b):
        return a + b

    assert ray.get(add.remote(1, 2)) == 3


def test_put_get_roundtrip(ray_start_regular_shared):
    values = [0, 1, -7, 2 ** 70, 1.5, "hello", b"bytes", None, True, [1, 2, [3]], (1, "a"),
              {"a": 1, 2: [3]}, {1, 2}, np.arange(10), np.zeros((3, 4), dtype=np.float32),
              np.array("x"), np.random.default_rng(0).random(100_000)]
    for value in values:
        got = ray.get(ray.put(value))
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got, value)
            assert got.dtype == value.dtype
        else:
            assert got == value and type(got) is type(value)


def test_task_roundtrip_values(ray_start_regular_shared):
    rng = np.random.default_rng(1)
    for value in [rng.integers(0, 100, 7).tolist(), {"k": rng.random(5)}, "s" * 1000]:
        got = ray.get(identity.remote(value))
        if isinstance(value, dict):
            np.testing.assert_array_equal(got["k"], value["k"])
        else:
            assert got == value


def test_large_numpy_argument_and_result(ray_start_regular_shared):
    arr = np.random.default_rng(2).random((512, 512))
    np.testing.assert_array_equal(ray.get(identity.remote(arr)), arr)
    np.testing.assert_array_equal(ray.get(identity.remote(ray.put(arr))), arr)


def test_multiple_return_values(ray_start_regular_shared):
    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert ray.get(refs) == [1, 2, 3]


def test_num_returns_through_options(ray_start_regular_shared):
    @ray.remote
    def pair():
        return "a", "b"

    a, b = pair.options(num_returns=2).remote()
    assert ray.get([a, b]) == ["a", "b"]
    single = pair.remote()
    assert ray.get(single) == ("a", "b")


def test_num_returns_zero_gives_none(ray_start_regular_shared):
    @ray.remote(num_returns=0)
    def nothing():
        return None

    assert nothing.remote() is None


def test_keyword_and_default_arguments(ray_start_regular_shared):
    @ray.remote
    def kw(a, b=2, *, c=3):
        return a, b, c

    assert ray.get(kw.remote(1)) == (1, 2, 3)
    assert ray.get(kw.remote(1, c=5)) == (1, 2, 5)
    assert ray.get(kw.remote(a=4, b=5, c=6)) == (4, 5, 6)


def test_variable_arguments(ray_start_regular_shared):
    @ray.remote
    def varargs(a, *args, **kwargs):
        return a, args, kwargs

    assert ray.get(varargs.remote(1, 2, 3, x=4)) == (1, (2, 3), {"x": 4})
    assert ray.get(varargs.remote(1)) == (1, (), {})


def test_wrong_arguments_raise_type_error_at_submission(ray_start_regular_shared):
    @ray.remote
    def one(a):
        return a

    with pytest.raises(TypeError):
        one.remote()
    with pytest.raises(TypeError):
        one.remote(1, 2)
    with pytest.raises(TypeError):
        one.remote(1, b=2)


def test_calling_remote_function_directly_raises(ray_start_regular_shared):
    with pytest.raises(TypeError):
        identity(1)


def test_top_level_ref_arguments_are_resolved(ray_start_regular_shared):
    ref = ray.put(41)

    @ray.remote
    def inc(x):
        return x + 1

    assert ray.get(inc.remote(ref)) == 42
    assert ray.get(inc.remote(inc.remote(ref))) == 43
    assert ray.get(inc.remote(x=ref)) == 42


def test_nested_refs_are_passed_as_refs(ray_start_regular_shared):
    inner = ray.put(5)

    @ray.remote
    def check(refs):
        assert isinstance(refs[0], ray.ObjectRef)
        return ray.get(refs[0]) * 2

    assert ray.get(check.remote([inner])) == 10


def test_put_of_nested_refs(ray_start_regular_shared):
    inner = ray.put("inner")
    outer = ray.put({"ref": inner})
    got = ray.get(outer)
    assert isinstance(got["ref"], ray.ObjectRef)
    assert ray.get(got["ref"]) == "inner"


def test_return_refs_from_task(ray_start_regular_shared):
    @ray.remote
    def make():
        return [ray.put(i) for i in range(3)]

    refs = ray.get(make.remote())
    assert ray.get(refs) == [0, 1, 2]


def test_nested_tasks(ray_start_regular_shared):
    @ray.remote
    def leaf(i):
        return i * i

    @ray.remote
    def parent(n):
        return sum(ray.get([leaf.remote(i) for i in range(n)]))

    assert ray.get(parent.remote(10)) == sum(i * i for i in range(10))


def test_recursive_tasks(ray_start_regular_shared):
    @ray.remote
    def factorial(n):
        if n == 0:
            return 1
        return n * ray.get(factorial.remote(n - 1))

    assert ray.get(factorial.remote(6)) == 720


def test_get_list_keeps_order(ray_start_regular_shared):
    refs = [identity.remote(i) for i in range(50)]
    assert ray.get(refs) == list(range(50))


def test_many_small_tasks(ray_start_regular_shared):
    @ray.remote
    def sq(x):
        return x * x

    assert ray.get([sq.remote(i) for i in range(500)]) == [i * i for i in range(500)]


def test_get_timeout(ray_start_regular_shared):
    @ray.remote
    def slow():
        time.sleep(30)

    ref = slow.remote()
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(ref, timeout=0.1)
    with pytest.raises(TimeoutError):  # Ray's GetTimeoutError is also a TimeoutError
        ray.get(ref, timeout=0)
    ray.cancel(ref, force=True)


def test_get_ready_object_with_zero_timeout(ray_start_regular_shared):
    ref = ray.put(3)
    assert ray.get(ref, timeout=0) == 3


def test_get_non_ref_raises(ray_start_regular_shared):
    with pytest.raises((TypeError, ValueError)):
        ray.get(1)
    with pytest.raises((TypeError, ValueError)):
        ray.get([ray.put(1), 2])


def test_put_of_ref_raises(ray_start_regular_shared):
    ref = ray.put(1)
    with pytest.raises(TypeError):  # Ray: "Calling 'put' on an ray.ObjectRef is not allowed"
        ray.put(ref)


def test_object_ref_properties(ray_start_regular_shared):
    a, b = ray.put(1), ray.put(1)
    same = a
    assert a != b and a == same and hash(a) == hash(same)
    assert isinstance(a.hex(), str) and isinstance(a.binary(), bytes)
    assert a.hex() != b.hex()
    assert len({a, b, a}) == 2
    assert ray.ObjectID is ray.ObjectRef


def test_object_ref_future(ray_start_regular_shared):
    fut = identity.remote(7).future()
    assert fut.result(timeout=30) == 7


def test_object_ref_await(ray_start_regular_shared):
    async def main():
        return await identity.remote(8), await asyncio.gather(identity.remote(1), identity.remote(2))

    assert asyncio.run(main()) == (8, [1, 2])


def test_options_keep_function_and_reject_unknown(ray_start_regular_shared):
    @ray.remote(num_cpus=1)
    def g():
        return "g"

    assert ray.get(g.options(num_cpus=0.5, name="renamed").remote()) == "g"
    with pytest.raises(ValueError):
        g.options(not_an_option=1)


def test_invalid_remote_options(ray_start_regular_shared):
    with pytest.raises((ValueError, TypeError)):
        @ray.remote(num_returns=-1)
        def neg():
            return None
    with pytest.raises((ValueError, TypeError)):
        @ray.remote(num_cpus=-1)
        def neg_cpus():
            return None


def test_closure_captures(ray_start_regular_shared):
    factor = 7
    table = {"x": np.arange(3)}

    @ray.remote
    def scaled(i):
        return int(table["x"][i]) * factor

    assert ray.get([scaled.remote(i) for i in range(3)]) == [0, 7, 14]


def test_remote_function_private_remote(ray_start_regular_shared):
    assert ray.get(identity._remote(args=(5,), kwargs={})) == 5
    assert ray.get(three._remote(args=(), num_returns=3)) == [1, 2, 3]


def test_runtime_context_in_task(ray_start_regular_shared):
    @ray.remote
    def ids():
        ctx = ray.get_runtime_context()
        return ctx.get_job_id(), ctx.get_task_id(), ctx.get_actor_id()

    job, task, actor = ray.get(ids.remote())
    assert job == ray.get_runtime_context().get_job_id()
    assert task is not None and actor is None


def test_is_initialized_and_cluster_resources(ray_start_regular_shared):
    assert ray.is_initialized()
    resources = ray.cluster_resources()
    assert resources["CPU"] == 2
    assert ray.available_resources()["CPU"] <= resources["CPU"]
    assert len(ray.nodes()) >= 1 and all(n["Alive"] for n in ray.nodes())


def test_driver_sys_path_reaches_workers(tmp_path):
    """Ray's workers get the driver's sys.path at init: a module found there imports in tasks."""
    if ray.is_initialized():
        ray.shutdown()
    (tmp_path / "conformance_extra_mod.py").write_text("VALUE = 11\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import conformance_extra_mod

        ray.init(num_cpus=2)

        @ray.remote
        def read(mod):
            return mod.VALUE

        assert ray.get(read.remote(conformance_extra_mod)) == 11
    finally:
        sys.path.remove(str(tmp_path))
        ray.shutdown()
