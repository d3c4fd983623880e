"""Port of Ray's test_actor.py / test_actor_advanced.py / test_actor_failures.py (sync actors)."""

from __future__ import annotations

import numpy as np
import pytest

import hpcray as ray

from .ray_test_utils import wait_for_condition


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increase(self, delta=1):
        self.value += delta
        return self.value

    def get(self):
        return self.value


def test_actor_state_and_constructor_args(ray_start_regular_shared):
    c = Counter.remote(10)
    assert ray.get([c.increase.remote() for _ in range(5)]) == [11, 12, 13, 14, 15]
    assert ray.get(Counter.remote(start=3).get.remote()) == 3


def test_actor_calls_run_in_submission_order(ray_start_regular_shared):
    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)

        def items_(self):
            return self.items

    log = Log.remote()
    for i in range(100):
        log.add.remote(i)
    assert ray.get(log.items_.remote()) == list(range(100))


def test_many_actors_are_independent(ray_start_regular_shared):
    actors = [Counter.remote(i) for i in range(5)]
    assert ray.get([a.increase.remote(i) for i, a in enumerate(actors)]) == [2 * i for i in range(5)]


def test_actor_method_keyword_and_default_arguments(ray_start_regular_shared):
    @ray.remote
    class KW:
        def f(self, a, b=2, *args, c=3, **kw):
            return a, b, args, c, kw

    a = KW.remote()
    assert ray.get(a.f.remote(1)) == (1, 2, (), 3, {})
    assert ray.get(a.f.remote(1, 5, 6, c=7, d=8)) == (1, 5, (6,), 7, {"d": 8})


def test_actor_wrong_arguments_raise_type_error(ray_start_regular_shared):
    c = Counter.remote()
    with pytest.raises(TypeError):
        c.increase.remote(1, 2)
    with pytest.raises(TypeError):
        c.get.remote(unknown=1)
    with pytest.raises(TypeError):
        Counter.remote(1, 2)


def test_actor_class_cannot_be_instantiated_directly(ray_start_regular_shared):
    with pytest.raises(TypeError):
        Counter()


def test_actor_method_cannot_be_called_directly(ray_start_regular_shared):
    c = Counter.remote()
    with pytest.raises(TypeError):
        c.get()


def test_unknown_method_raises_attribute_error(ray_start_regular_shared):
    c = Counter.remote()
    with pytest.raises(AttributeError):
        c.no_such_method.remote()


def test_actor_method_num_returns(ray_start_regular_shared):
    @ray.remote
    class Multi:
        @ray.method(num_returns=2)
        def two(self):
            return 1, 2

        def pair(self):
            return 3, 4

    m = Multi.remote()
    x, y = m.two.remote()
    assert ray.get([x, y]) == [1, 2]
    x, y = m.pair.options(num_returns=2).remote()
    assert ray.get([x, y]) == [3, 4]


def test_actor_handle_passed_to_task(ray_start_regular_shared):
    c = Counter.remote()

    @ray.remote
    def bump(counter, n):
        return ray.get([counter.increase.remote() for _ in range(n)])[-1]

    assert ray.get(bump.remote(c, 4)) == 4
    assert ray.get(c.get.remote()) == 4


def test_actor_handle_passed_to_actor(ray_start_regular_shared):
    @ray.remote
    class User:
        def use(self, counter):
            return ray.get(counter.increase.remote(5))

    c = Counter.remote()
    assert ray.get(User.remote().use.remote(c)) == 5


def test_actor_creates_actor_and_tasks(ray_start_regular_shared):
    @ray.remote
    def double(x):
        return 2 * x

    @ray.remote
    class Parent:
        def __init__(self):
            self.child = Counter.remote(1)

        def run(self):
            return ray.get(double.remote(ray.get(self.child.increase.remote())))

    assert ray.get(Parent.remote().run.remote()) == 4


def test_actor_method_returns_refs(ray_start_regular_shared):
    @ray.remote
    class Maker:
        def make(self):
            return ray.put(np.arange(5))

    ref = ray.get(Maker.remote().make.remote())
    np.testing.assert_array_equal(ray.get(ref), np.arange(5))


def test_actor_method_exception_keeps_actor_alive(ray_start_regular_shared):
    @ray.remote
    class Flaky:
        def __init__(self):
            self.n = 0

        def fail(self):
            self.n += 1
            raise ValueError("oops")

        def count(self):
            return self.n

    f = Flaky.remote()
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(f.fail.remote())
    assert isinstance(info.value, ValueError) and "oops" in str(info.value)
    assert ray.get(f.count.remote()) == 1


def test_actor_init_failure(ray_start_regular_shared):
    @ray.remote
    class Bad:
        def __init__(self):
            raise ZeroDivisionError("in init")

        def f(self):
            return 1

    b = Bad.remote()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(b.f.remote())


def test_kill_actor(ray_start_regular_shared):
    c = Counter.remote()
    assert ray.get(c.increase.remote()) == 1
    ray.kill(c)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(c.increase.remote())


def test_actor_restart_after_kill_with_max_restarts(ray_start_regular_shared):
    c = Counter.options(max_restarts=1).remote(0)
    assert ray.get(c.increase.remote()) == 1
    ray.kill(c, no_restart=False)
    got = []

    def restarted():
        try:
            got.append(ray.get(c.increase.remote()))
            return True
        except ray.exceptions.RayActorError:
            return False

    wait_for_condition(restarted, timeout=5)
    assert got == [1]  # the restarted actor ran __init__ again: its state starts over


def test_exit_actor(ray_start_regular_shared):
    @ray.remote
    class Quitter:
        def quit(self):
            ray.actor.exit_actor()

        def ping(self):
            return 1

    q = Quitter.remote()
    assert ray.get(q.ping.remote()) == 1
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(q.quit.remote())
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(q.ping.remote())


def test_ray_terminate_runs_after_queued_calls(ray_start_regular_shared):
    c = Counter.remote()
    refs = [c.increase.remote() for _ in range(3)]
    c.__ray_terminate__.remote()
    assert ray.get(refs) == [1, 2, 3]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(c.get.remote())


def test_ray_ready(ray_start_regular_shared):
    c = Counter.remote()
    assert ray.get(c.__ray_ready__.remote()) is True


def test_class_attributes_through_actor_class(ray_start_regular_shared):
    @ray.remote
    class WithAttrs:
        LIMIT = 5

        @staticmethod
        def helper():
            return "static"

        def limit(self):
            return self.LIMIT

    assert WithAttrs.LIMIT == 5
    assert ray.get(WithAttrs.remote().limit.remote()) == 5


def test_actor_inheritance(ray_start_regular_shared):
    class Base:
        def base(self):
            return "base"

        def over(self):
            return "base"

    @ray.remote
    class Derived(Base):
        def over(self):
            return "derived"

    d = Derived.remote()
    assert ray.get([d.base.remote(), d.over.remote()]) == ["base", "derived"]


def test_actor_handle_equality_and_pickling(ray_start_regular_shared):
    c = Counter.remote()

    @ray.remote
    def echo(handles):
        return handles[0]

    back = ray.get(echo.remote([c]))
    assert back == c and hash(back) == hash(c)
    assert ray.get(back.increase.remote()) == 1


def test_actor_private_remote(ray_start_regular_shared):
    c = Counter._remote(args=(7,), kwargs={})
    assert ray.get(c.get.remote()) == 7


def test_actor_runtime_context(ray_start_regular_shared):
    @ray.remote
    class Ctx:
        def ids(self):
            ctx = ray.get_runtime_context()
            return ctx.get_actor_id(), ctx.get_job_id()

    actor_id, job_id = ray.get(Ctx.remote().ids.remote())
    assert actor_id is not None and job_id == ray.get_runtime_context().get_job_id()


def test_actor_options_resources(ray_start_regular_shared):
    c = Counter.options(num_cpus=1).remote(2)
    assert ray.get(c.get.remote()) == 2
    with pytest.raises(ValueError):
        Counter.options(no_such_option=1)


def test_actor_stateful_numpy(ray_start_regular_shared):
    @ray.remote
    class Acc:
        def __init__(self):
            self.total = np.zeros(4)

        def add(self, x):
            self.total += x
            return self.total

    rng = np.random.default_rng(3)
    xs = rng.random((10, 4))
    a = Acc.remote()
    for x in xs:
        a.add.remote(x)
    np.testing.assert_allclose(ray.get(a.add.remote(np.zeros(4))), xs.sum(axis=0))
