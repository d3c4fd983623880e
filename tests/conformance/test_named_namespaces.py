"""Port of Ray's named-actor tests (test_actor_advanced.py) and test_namespace.py."""

from __future__ import annotations

import pytest

import hpcray as ray


@ray.remote
class Holder:
    def __init__(self, value=0):
        self.value = value

    def get(self):
        return self.value

    def set(self, value):
        self.value = value


def test_named_actor_get_actor(ray_start_regular):
    a = Holder.options(name="holder").remote(3)
    b = ray.get_actor("holder")
    assert ray.get(b.get.remote()) == 3
    ray.get(b.set.remote(4))
    assert ray.get(a.get.remote()) == 4


def test_named_actor_from_task(ray_start_regular):
    keep = Holder.options(name="shared").remote(9)  # noqa: F841 - the handle keeps it alive

    @ray.remote
    def read():
        return ray.get(ray.get_actor("shared").get.remote())

    assert ray.get(read.remote()) == 9


def test_get_actor_missing_raises_value_error(ray_start_regular):
    with pytest.raises(ValueError):
        ray.get_actor("nobody")


def test_duplicate_name_raises_value_error(ray_start_regular):
    a = Holder.options(name="dup").remote()
    ray.get(a.get.remote())
    with pytest.raises(ValueError):
        Holder.options(name="dup").remote()


def test_get_if_exists(ray_start_regular):
    a = Holder.options(name="once", get_if_exists=True).remote(1)
    b = Holder.options(name="once", get_if_exists=True).remote(2)
    assert ray.get(b.get.remote()) == 1
    assert a == b


def test_name_reusable_after_kill(ray_start_regular):
    a = Holder.options(name="again").remote(1)
    ray.get(a.get.remote())
    ray.kill(a)
    with pytest.raises(ValueError):
        for _ in range(100):  # the name is released once the actor is gone
            ray.get_actor("again")
    b = Holder.options(name="again").remote(2)
    assert ray.get(b.get.remote()) == 2


def test_named_actor_empty_name_raises(ray_start_regular):
    with pytest.raises(ValueError):
        Holder.options(name="").remote()


@pytest.mark.parametrize("ray_start_regular", [{"namespace": "ns1"}], indirect=True)
def test_init_namespace_in_runtime_context(ray_start_regular):
    assert ray.get_runtime_context().namespace == "ns1"

    @ray.remote
    def ns():
        return ray.get_runtime_context().namespace

    assert ray.get(ns.remote()) == "ns1"


def test_anonymous_namespace_is_unique(ray_start_regular):
    first = ray.get_runtime_context().namespace
    assert isinstance(first, str) and first
    ray.shutdown()
    ray.init(num_cpus=2)
    assert ray.get_runtime_context().namespace != first


def test_namespaces_isolate_names(ray_start_regular):
    a = Holder.options(name="same", namespace="x").remote("x")
    b = Holder.options(name="same", namespace="y").remote("y")
    assert ray.get(ray.get_actor("same", namespace="x").get.remote()) == "x"
    assert ray.get(ray.get_actor("same", namespace="y").get.remote()) == "y"
    assert a != b
    with pytest.raises(ValueError):
        ray.get_actor("same")  # not in the session's own namespace


@pytest.mark.parametrize("ray_start_regular", [{"namespace": "mine"}], indirect=True)
def test_get_actor_uses_session_namespace(ray_start_regular):
    keep = Holder.options(name="here").remote(5)  # noqa: F841
    assert ray.get(ray.get_actor("here").get.remote()) == 5
    assert ray.get(ray.get_actor("here", namespace="mine").get.remote()) == 5
    with pytest.raises(ValueError):
        ray.get_actor("here", namespace="other")


def test_detached_actor_lifetime_accepted(ray_start_regular):
    a = Holder.options(name="det", lifetime="detached").remote(1)
    assert ray.get(ray.get_actor("det").get.remote()) == 1
    ray.kill(a)


def test_list_named_actors(ray_start_regular):
    keep = [Holder.options(name="l1").remote(), Holder.options(name="l2").remote()]  # noqa: F841
    names = ray.util.list_named_actors()
    assert {"l1", "l2"} <= set(names)
    entries = ray.util.list_named_actors(all_namespaces=True)
    assert {"l1", "l2"} <= {e["name"] for e in entries}
