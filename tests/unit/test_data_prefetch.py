"""The Prefetcher behind iter_batches (datasets and trainer shards): how far ahead its thread
pulls and starts fetches, order, errors and early exits, in-process on controlled streams."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from hpcray.data.prefetch import Prefetcher

WAIT = 30.0  # a liveness bound (fails a hung test), not a timing measurement


class Stream:
    """Items 0..n-1; records, for each item pulled, how many the consumer had taken."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at = n, fail_at
        self.taken = 0  # set by the test's consumer
        self.pulls: list[tuple[int, int]] = []  # (item, items the consumer had taken)
        self.cond = threading.Condition()
        self.closed = threading.Event()

    def __iter__(self):
        try:
            for i in range(self.n):
                if i == self.fail_at:
                    raise OSError(f"item {i} is unreadable")
                with self.cond:
                    self.pulls.append((i, self.taken))
                    self.cond.notify_all()
                yield i
        finally:
            self.closed.set()

    def wait_pulled(self, k: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.pulls) >= k, timeout=WAIT)


def done(value) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_the_thread_fetches_exactly_depth_items_ahead_of_the_one_in_use(depth: int) -> None:
    src = Stream(40)
    started: list[int] = []
    p = Prefetcher(iter(src), depth, lambda i: (started.append(i), done(i * 10))[1])
    got = []
    for item, value in p:
        src.taken += 1
        got.append((item, value))
        if item in (0, 17):  # hold this item until the thread has filled the window
            assert src.wait_pulled(min(40, item + depth + 1))
            assert p.ahead == depth
    assert got == [(i, i * 10) for i in range(40)]
    assert started == list(range(40))
    # never more than depth ahead of the item in use (the first depth + 1 before any is used)
    assert all(item - max(taken - 1, 0) <= depth for item, taken in src.pulls), src.pulls
    assert p.max_ahead == depth
    assert f"prefetch_batches={depth}: up to {depth} blocks" in p.describe()


def test_depth_zero_pulls_each_item_only_when_it_is_needed() -> None:
    src = Stream(10)
    p = Prefetcher(iter(src), 0, done)
    for item, value in p:
        assert item == value
        assert src.pulls[-1] == (item, item)  # pulled when the consumer had taken `item`
        src.taken += 1
    assert p.max_ahead == 0


def test_values_come_in_stream_order_when_fetches_finish_out_of_order() -> None:
    futures = [Future() for _ in range(12)]
    p = Prefetcher(iter(range(12)), 12, lambda i: futures[i])
    it = iter(p)

    def finish_backwards() -> None:
        for i in reversed(range(12)):
            futures[i].set_result(f"v{i}")

    threading.Thread(target=finish_backwards).start()
    assert [v for _, v in it] == [f"v{i}" for i in range(12)]


def test_errors_surface_at_their_position_in_the_stream() -> None:
    src = Stream(10, fail_at=6)
    got = []
    with pytest.raises(OSError, match="item 6 is unreadable"):
        for item, _ in Prefetcher(iter(src), 4, done):
            got.append(item)
    assert got == list(range(6))

    def start(i: int) -> Future:
        fut: Future = Future()
        fut.set_exception(ValueError(f"block {i} failed")) if i == 3 else fut.set_result(i)
        return fut

    got = []
    with pytest.raises(ValueError, match="block 3 failed"):
        for item, _ in Prefetcher(iter(range(10)), 2, start):
            got.append(item)
    assert got == [0, 1, 2]


def test_leaving_early_stops_the_thread_and_closes_the_stream() -> None:
    src = Stream(1000)
    p = Prefetcher(iter(src), 2, done)
    gen = iter(p)
    assert next(gen) == (0, 0)
    gen.close()
    assert src.closed.wait(WAIT)
    assert len(src.pulls) <= 4  # the window (3) and at most the one pulled while stopping
