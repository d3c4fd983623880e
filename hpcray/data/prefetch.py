"""Prefetching for iter_batches, on datasets and on their splits (trainer shards) alike.

A thread pulls the stream of blocks (the streaming executor's outputs, or a split
coordinator's replies) and starts fetching each to this rank, so that while the consumer uses
one block the next ``depth`` are already on their way; it pauses when it is that far ahead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

_END = object()
_ERROR = object()


class Prefetcher:
    """Yields ``(item, value)`` for the items of a stream, in order, where value is what
    ``start(item)`` fetches (a Future's result; None where it returns None). With depth > 0 a
    background thread pulls items and calls ``start`` on each up to depth items ahead of the
    one in use (the consumer's latest); with depth 0 nothing is pulled before it is needed."""

    def __init__(self, items: Iterator[Any], depth: int,
                 start: Callable[[Any], Future | None]):
        self.depth = max(0, int(depth))
        self._items = items
        self._start = start
        self._lock = threading.Lock()
        self._pulled = 0  # items taken from the stream and started
        self._consumed = 0  # items handed to the consumer (the one in use included)
        self.max_ahead = 0
        self.blocked_s = 0.0  # consumer time spent waiting for its next block
        self._stop = False
        self._slots = threading.Semaphore(self.depth + 1)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def ahead(self) -> int:
        """Items started beyond the one in use."""
        with self._lock:
            return max(0, self._pulled - max(1, self._consumed))

    def _note(self, pulled: int = 0, consumed: int = 0) -> None:
        with self._lock:
            self._pulled += pulled
            self._consumed += consumed
            if self._consumed:
                self.max_ahead = max(self.max_ahead, self._pulled - self._consumed)

    def _pump(self) -> None:
        """The thread: pull, start, queue; one slot per item in use or ahead."""
        items = self._items
        try:
            while True:
                self._slots.acquire()
                if self._stop:
                    return
                try:
                    item = next(items)
                except StopIteration:
                    self._queue.put((_END, None))
                    return
                fut = self._start(item)
                self._note(pulled=1)
                self._queue.put((item, fut))
        except BaseException as exc:  # noqa: BLE001 - raised in the consumer, in order
            self._queue.put((_ERROR, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        if self.depth == 0:
            for item in self._items:
                fut = self._start(item)
                self._note(pulled=1, consumed=1)
                yield item, (fut.result() if fut is not None else None)
            return
        threading.Thread(target=self._pump, daemon=True, name="hpcray-data-prefetch").start()
        in_use = False
        try:
            while True:
                t0 = time.perf_counter()
                item, fut = self._queue.get()
                if item is _END:
                    return
                if item is _ERROR:
                    raise fut
                self._note(consumed=1)
                if in_use:  # the consumer is done with the last item: its slot goes ahead
                    self._slots.release()
                in_use = True
                value = fut.result() if fut is not None else None
                self.blocked_s += time.perf_counter() - t0
                yield item, value
        finally:
            self._stop = True
            self._slots.release()

    def describe(self) -> str:
        return (f"prefetch_batches={self.depth}: up to {self.max_ahead} blocks fetched ahead of "
                f"the one in use ({self.ahead} now), {self.blocked_s:.2f}s waiting for blocks")
