"""CallShape (the .remote() argument check) against calling the function itself, on random
signatures and calls."""

from __future__ import annotations

import pickle
import random

import pytest

from hpcray._private.core.options import CallShape


def random_function(rng: random.Random):
    parts, names = [], iter(f"p{i}" for i in range(20))
    posonly = [next(names) + ("=0" if rng.random() < 0.3 else "") for _ in range(rng.randint(0, 2))]
    if posonly:
        posonly.sort(key=lambda p: "=" in p)
        parts += [*posonly, "/"]
    normal = [next(names) + ("=0" if rng.random() < 0.4 else "") for _ in range(rng.randint(0, 3))]
    if posonly and any("=" in p for p in posonly):
        normal = [p if "=" in p else p + "=0" for p in normal]
    normal.sort(key=lambda p: "=" in p)
    parts += normal
    if rng.random() < 0.3:
        parts.append("*args")
    kwonly = [next(names) + ("=0" if rng.random() < 0.5 else "") for _ in range(rng.randint(0, 2))]
    if kwonly:
        parts += ([] if "*args" in parts else ["*"]) + kwonly
    if rng.random() < 0.3:
        parts.append("**kw")
    scope: dict = {}
    exec(f"def f({', '.join(parts)}): pass", scope)  # noqa: S102 - generated test input
    return scope["f"]


def test_against_python_calls() -> None:
    rng = random.Random(11)
    checked = raised = 0
    for _ in range(400):
        fn = random_function(rng)
        shape = pickle.loads(pickle.dumps(CallShape(fn)))  # it travels with handles
        for _ in range(20):
            args = tuple(range(rng.randint(0, 5)))
            kwargs = {f"p{rng.randint(0, 8)}": 1 for _ in range(rng.randint(0, 3))}
            if rng.random() < 0.2:
                kwargs["zz"] = 1
            try:
                fn(*args, **kwargs)  # Python's own answer (the body does nothing)
                expected = None
            except TypeError as exc:
                expected = exc
            if expected is None:
                shape.check(args, kwargs, "f")
            else:
                with pytest.raises(TypeError):
                    shape.check(args, kwargs, "f")
                raised += 1
            checked += 1
    assert raised > checked // 5  # the random calls hit both outcomes


def test_methods_drop_self_and_builtins_accept_anything() -> None:
    class C:
        def m(self, a, *, b):
            pass

    CallShape(C.m, drop_first=True).check((1,), {"b": 2}, "C.m")
    with pytest.raises(TypeError, match="missing required argument"):
        CallShape(C.m, drop_first=True).check((1,), {}, "C.m")
    CallShape(max).check((1, 2, 3), {"x": 1}, "max")  # no signature: the worker decides


def test_remote_calls_are_checked_at_the_call_site() -> None:
    """Wrong arguments raise TypeError from .remote(), for tasks, actor creation and actor
    methods, also through a handle found by name; nothing is submitted."""
    from loopback_job import loopback_job

    import hpcray

    @hpcray.remote
    def add(a, b, *, scale=1):
        return (a + b) * scale

    @hpcray.remote
    class Acc:
        def __init__(self, start):
            self.total = start

        def add(self, k, /):
            self.total += k
            return self.total

        @staticmethod
        def pure(x):
            return x

    with loopback_job(workers=1):
        assert hpcray.get(add.remote(1, 2, scale=3)) == 9
        with pytest.raises(TypeError, match="unexpected keyword argument 'scal'"):
            add.remote(1, 2, scal=3)
        with pytest.raises(TypeError, match="missing required argument"):
            add.remote(1)
        with pytest.raises(TypeError, match="takes 1 positional"):
            Acc.remote(1, 2)
        acc = Acc.options(name="acc").remote(10)
        assert hpcray.get(acc.add.remote(5)) == 15
        with pytest.raises(TypeError, match="unexpected keyword argument 'k'"):
            acc.add.remote(k=5)
        assert hpcray.get(acc.pure.remote(7)) == 7
        found = hpcray.get_actor("acc")
        with pytest.raises(TypeError, match="takes 1 positional"):
            found.add.remote(1, 2)
        assert hpcray.get(found.add.remote(1)) == 16


def test_object_ref_completion_callbacks() -> None:
    """ref._on_completed(callback) gets the value, or the task's exception."""
    import threading

    from loopback_job import loopback_job

    import hpcray

    @hpcray.remote
    def value(x):
        if x < 0:
            raise ValueError("negative")
        return x * 2

    with loopback_job(workers=1):
        got, done = [], threading.Event()
        for x in (3, -1):
            hpcray.get(hpcray.put(0))
            value.remote(x)._on_completed(lambda v: (got.append(v), len(got) == 2 and done.set()))
        assert done.wait(30)
        assert 6 in got and any(isinstance(v, ValueError) for v in got)
