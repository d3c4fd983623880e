"""Actor pool sizes in-process: initial_size by Ray's rules, and bad values named."""

from __future__ import annotations

import warnings

import pytest

import hpcray.data as rd
from hpcray.data import ActorPoolStrategy
from hpcray.data.executor import MapSpec, pool_size


class Model:
    def __call__(self, batch: dict) -> dict:
        return batch


def spec_of(ds: rd.Dataset) -> MapSpec:
    return ds._plan.ops[-1]


@pytest.mark.parametrize("kwargs, want", [
    ({"min_size": 2, "max_size": 6, "initial_size": 4}, (2, 6, 4)),
    ({"min_size": 2, "max_size": 6}, (2, 6, 2)),  # initial defaults to min
    ({"size": 3}, (3, 3, 3)),
    ({"min_size": 1, "max_size": 3, "initial_size": 3}, (1, 3, 3)),
])
def test_a_strategy_hands_its_min_max_and_initial_to_the_pool(kwargs, want) -> None:
    strategy = ActorPoolStrategy(**kwargs)
    assert (strategy.min_size, strategy.max_size, strategy.initial_size) == want
    ds = rd.range(10).map_batches(Model, compute=strategy)
    assert pool_size(spec_of(ds)) == want


@pytest.mark.parametrize("concurrency, want", [((1, 4, 2), (1, 4, 2)), ((2, 5), (2, 5, 2)),
                                               (3, (3, 3, 3))])
def test_concurrency_tuples_give_min_max_and_initial(concurrency, want) -> None:
    ds = rd.range(10).map_batches(Model, concurrency=concurrency)
    assert pool_size(spec_of(ds)) == want


@pytest.mark.parametrize("kwargs", [{"min_size": 2, "max_size": 4, "initial_size": 1},
                                    {"min_size": 2, "max_size": 4, "initial_size": 5},
                                    {"min_size": 1, "max_size": 2, "initial_size": 0}])
def test_an_initial_size_outside_min_max_is_named(kwargs) -> None:
    with pytest.raises(ValueError, match=r"initial_size must be between min_size and max_size "
                                         rf"\({kwargs['min_size']} <= initial_size <= "
                                         rf"{kwargs['max_size']}\), got initial_size="
                                         rf"{kwargs['initial_size']}"):
        ActorPoolStrategy(**kwargs)


@pytest.mark.parametrize("concurrency, match", [
    ((2, 4, 5), "initial_size must be between"),
    ((3, 1), "1 <= min_size <= max_size"),
    ((1, 2, 3, 4), r"n, \(min, max\) or \(min, max, initial\)"),
    ((1.5, 2), r"n, \(min, max\) or \(min, max, initial\)"),
])
def test_bad_concurrency_tuples_are_named(concurrency, match) -> None:
    with pytest.raises(ValueError, match=match):
        rd.range(10).map_batches(Model, concurrency=concurrency)


def test_size_excludes_the_other_sizes() -> None:
    with pytest.raises(ValueError, match="either size, or min_size/max_size/initial_size"):
        ActorPoolStrategy(size=2, initial_size=2)


def test_max_tasks_in_flight_is_checked_and_its_hint_named() -> None:


    with pytest.raises(ValueError, match="max_tasks_in_flight_per_actor"):
        ActorPoolStrategy(min_size=1, max_size=2, max_tasks_in_flight_per_actor=0)
    with pytest.warns(UserWarning, match="two blocks per actor"):
        ActorPoolStrategy(min_size=1, max_size=2, max_tasks_in_flight_per_actor=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ActorPoolStrategy(min_size=1, max_size=2, max_tasks_in_flight_per_actor=2)


def test_task_pool_size_is_the_concurrency() -> None:
    from hpcray.data.dataset import TaskPoolStrategy, _compute_concurrency

    assert _compute_concurrency(TaskPoolStrategy(size=3), None, False) == 3
    assert _compute_concurrency(TaskPoolStrategy(), 5, False) == 5
    with pytest.raises(ValueError, match="disagree"):
        _compute_concurrency(TaskPoolStrategy(size=3), 2, False)
