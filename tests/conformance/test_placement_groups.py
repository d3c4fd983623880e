"""Port of Ray's test_placement_group.py (single node: PACK/SPREAD/STRICT_PACK on the job's ranks)."""

from __future__ import annotations

import contextlib

import pytest

import hpcray as ray
from hpcray.util import placement_group as _placement_group
from hpcray.util import remove_placement_group
from hpcray.util.placement_group import get_current_placement_group
from hpcray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

_created = []


def placement_group(*args, **kwargs):
    """Creates a group and remembers it, so a failing test does not leave CPUs reserved."""
    pg = _placement_group(*args, **kwargs)
    _created.append(pg)
    return pg


@pytest.fixture(autouse=True)
def _remove_leftover_groups():
    yield
    while _created:
        pg = _created.pop()
        with contextlib.suppress(Exception):  # removed already
            remove_placement_group(pg)


@ray.remote(num_cpus=1)
def where():
    pg = get_current_placement_group()
    return pg.id if pg is not None else None


@ray.remote(num_cpus=1)
def one():
    return 1


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK"])
def test_placement_group_ready_and_wait(ray_start_regular_shared, strategy):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy=strategy)
    assert ray.get(pg.ready(), timeout=60) is not None
    assert pg.wait(timeout_seconds=60)
    assert pg.bundle_specs == [{"CPU": 1}, {"CPU": 1}]
    assert pg.bundle_count == 2
    remove_placement_group(pg)


def test_task_in_placement_group(ray_start_regular_shared):
    pg = placement_group([{"CPU": 1}])
    pg.wait(60)
    strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=0)
    assert ray.get(one.options(scheduling_strategy=strategy).remote(), timeout=60) == 1
    remove_placement_group(pg)


def test_current_placement_group_in_task(ray_start_regular_shared):
    pg = placement_group([{"CPU": 1}])
    pg.wait(60)
    strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=0)
    try:
        assert ray.get(where.options(scheduling_strategy=strategy).remote(), timeout=60) == pg.id
    finally:
        remove_placement_group(pg)


def test_actor_in_placement_group(ray_start_regular_shared):
    @ray.remote(num_cpus=1)
    class A:
        def pg(self):
            return "in pg"

    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    pg.wait(60)
    actors = [A.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=i)).remote() for i in range(2)]
    assert ray.get([a.pg.remote() for a in actors], timeout=60) == ["in pg", "in pg"]
    for a in actors:
        ray.kill(a)
    remove_placement_group(pg)


def test_placement_group_reserves_resources(ray_start_regular_shared):
    before = ray.available_resources().get("CPU", 0)
    pg = placement_group([{"CPU": 1}])
    pg.wait(60)
    assert ray.available_resources().get("CPU", 0) == before - 1
    remove_placement_group(pg)
    for _ in range(100):
        if ray.available_resources().get("CPU", 0) == before:
            break
    assert ray.available_resources().get("CPU", 0) == before


@pytest.mark.xfail(strict=True, reason="an infeasible placement group raises at placement_group() "
                   "(with hpcray._private.core.scheduler.Infeasible, a private class); Ray creates "
                   "it pending: pg.wait() returns False")
def test_infeasible_placement_group_never_ready(ray_start_regular_shared):
    pg = placement_group([{"CPU": 100}])
    assert not pg.wait(timeout_seconds=0.5)
    remove_placement_group(pg)


def test_invalid_bundles_raise_value_error(ray_start_regular_shared):
    with pytest.raises(ValueError):
        placement_group([])
    with pytest.raises(ValueError):
        placement_group([{"CPU": 0}])
    with pytest.raises(ValueError):
        placement_group([{"CPU": -1}])


def test_invalid_strategy_raises_value_error(ray_start_regular_shared):
    with pytest.raises(ValueError):
        placement_group([{"CPU": 1}], strategy="NOT_A_STRATEGY")


def test_bundle_index_out_of_range(ray_start_regular_shared):
    pg = placement_group([{"CPU": 1}])
    pg.wait(60)
    with pytest.raises(ValueError):
        ray.get(one.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=5)).remote(), timeout=60)
    remove_placement_group(pg)


def test_no_current_placement_group_outside(ray_start_regular_shared):
    assert get_current_placement_group() is None
    assert ray.get(where.remote(), timeout=60) is None


def test_named_placement_group(ray_start_regular_shared):
    pg = placement_group([{"CPU": 1}], name="named_pg")
    pg.wait(60)
    found = ray.util.get_placement_group("named_pg")
    assert found.id == pg.id
    remove_placement_group(pg)


@pytest.mark.xfail(strict=True, reason="hpcray.util.placement_group_table is missing")
def test_placement_group_table(ray_start_regular_shared):
    pg = placement_group([{"CPU": 1}])
    pg.wait(60)
    table = ray.util.placement_group_table(pg)
    assert table["state"] == "CREATED" and table["strategy"] == "PACK"
    remove_placement_group(pg)
