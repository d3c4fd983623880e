"""streaming_split: one execution per epoch, run by a coordinator actor, feeding n consumers.

With equal=True each block is cut into n parts (sizes differ by at most one row) and parts go
to the consumers with the fewest rows so far, so totals never differ by more than one row; at
the end every consumer stops at the smallest total. Blocks move from the rank that made them
straight to the consumer's rank.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import hpcray

from .block import Block, slice_block, split_rows
from .dataset import DataIterator, Dataset
from .executor import execute, remote, remote_class


def _split_block(block: Block, n: int) -> Any:
    parts = split_rows(block, n)
    return parts[0] if n == 1 else tuple(parts)


def assign_parts(sizes: list[int], totals: list[int]) -> list[int]:
    """Which consumer gets each part: the biggest parts to the consumers with the fewest rows
    (ties to the lower index). Updates totals."""
    owner = [0] * len(sizes)
    free = sorted(range(len(totals)), key=lambda i: (totals[i], i))
    for part in sorted(range(len(sizes)), key=lambda j: -sizes[j]):
        c = free.pop(0)
        owner[part] = c
        totals[c] += sizes[part]
    return owner


class SplitCoordinator:
    """Runs the dataset once per epoch and hands each consumer its blocks."""

    def __init__(self, ds: Dataset, n: int, equal: bool):
        self.ds = ds
        self.n = n
        self.equal = equal
        self.epoch = -1
        self.gen: Iterator | None = None
        self.queues: list[deque] = []
        self.totals: list[int] = []
        self.target: int | None = None
        # the ref last handed to each consumer stays referenced here until its next call, by
        # when the consumer has fetched it
        self.handed: dict[int, Any] = {}
        self.finished: set[int] = set()
        self.epoch_of: dict[int, int] = {}

    def _start(self, epoch: int) -> None:
        self.epoch = epoch
        self.gen = execute(self.ds._plan)
        self.queues = [deque() for _ in range(self.n)]
        self.totals = [0] * self.n
        self.target = None
        self.finished: set[int] = set()

    def _pull(self, requester: int) -> bool:
        try:
            ref, meta = next(self.gen)
        except StopIteration:
            self.target = min(self.totals) if self.equal else None
            return False
        rows = meta["rows"]
        if not self.equal:
            self.queues[requester].append((ref, rows))
            self.totals[requester] += rows
            return True
        bounds = [rows * i // self.n for i in range(self.n + 1)]
        sizes = [b - a for a, b in itertools.pairwise(bounds)]
        parts = remote(_split_block, num_returns=self.n).remote(ref, self.n)
        parts = [parts] if self.n == 1 else parts
        for part, size, owner in zip(parts, sizes, assign_parts(sizes, self.totals)):
            if size:
                self.queues[owner].append((part, size))
        return True

    def begin(self, i: int) -> int:
        """The epoch consumer i starts now: the one after its last (a restarted training
        worker's fresh iterator joins where its predecessor was)."""
        self.epoch_of[i] = self.epoch_of.get(i, -1) + 1
        return self.epoch_of[i]

    def next(self, i: int, epoch: int) -> tuple:
        """("block", ref, rows) or ("end", rows this consumer may use in total, or None)."""
        self.handed.pop(i, None)
        if epoch > self.epoch:
            if self.epoch >= 0 and len(self.finished) < self.n:
                return ("wait",)  # the others are still in the last epoch
            self._start(epoch)
        elif epoch < self.epoch:
            return ("end", 0)
        while not self.queues[i] and self.target is None and self.gen is not None:
            if not self._pull(i):
                break
        if self.queues[i]:
            ref, rows = self.queues[i].popleft()
            self.handed[i] = ref
            return ("block", ref, rows)
        self.finished.add(i)
        return ("end", self.target)


class SplitIterator(DataIterator):
    """Consumer i of a streaming_split; every pass over it is one epoch."""

    def __init__(self, coordinator: Any, index: int, n: int, equal: bool):
        self._coord = coordinator
        self._index = index
        self._n = n
        self._equal = equal

    def __reduce__(self):
        return (SplitIterator, (self._coord, self._index, self._n, self._equal))

    def _blocks(self, prefetch: int) -> Iterator[Block]:
        epoch = hpcray.get(self._coord.begin.remote(self._index))
        used = 0
        held: tuple | None = None  # one block held back, so the end can trim it
        while True:
            msg = hpcray.get(self._coord.next.remote(self._index, epoch))
            if msg[0] == "wait":
                time.sleep(0.005)
                continue
            if msg[0] == "end":
                if held is not None:
                    block, rows = held
                    limit = msg[1]
                    if limit is not None and used > limit:
                        block = slice_block(block, 0, rows - (used - limit))
                    yield block
                return
            block = hpcray.get(msg[1])
            if held is not None:
                yield held[0]
            held = (block, msg[2])
            used += msg[2]


def streaming_split(ds: Dataset, n: int, equal: bool) -> list[DataIterator]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    coord = remote_class(SplitCoordinator, max_concurrency=1).remote(ds, n, equal)
    return [SplitIterator(coord, i, n, equal) for i in range(n)]
