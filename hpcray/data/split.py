"""streaming_split: one execution per epoch, run by a coordinator actor, feeding n consumers.

With equal=True the epoch's rows (in the dataset's order) are dealt in chunks of the
consumers' batch size: chunk c goes to consumer c % n, each block being cut by a task into
its n parts, which move from the rank that made the block straight to the consumers' ranks.
At the end every consumer stops at the smallest total, so all see the same number of rows.
Because consumer i's batch k is chunk k*n + i, n consumers that each took b batches have used
exactly the first b*n chunks of the epoch: ``state_dict()`` records that position and
``load_state_dict()`` resumes there, also with a different number of consumers.
An epoch begins when every consumer has finished the last one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

import hpcray

from .block import Block, num_rows, size_bytes, slice_block, take_rows
from .context import DataContext
from .dataset import DataIterator, Dataset
from .executor import execute, remote, slice_task
from .prefetch import Prefetcher

DEFAULT_CHUNK = 256


def chunk_owners(start: int, rows: int, n: int, chunk: int) -> np.ndarray:
    """The consumer of each of rows [start, start+rows) of the dealt stream."""
    return (np.arange(start, start + rows) // chunk) % n


def part_sizes(start: int, rows: int, n: int, chunk: int) -> list[int]:
    return np.bincount(chunk_owners(start, rows, n, chunk), minlength=n).tolist()


# A consumer's part of a block is handed on as views of the block's chunks (no copy: they
# travel as they are) when chunks are at least this big, else copied into one block
VIEW_CHUNK_BYTES = 256 * 1024


def _deal(block: Block, start: int, n: int, chunk: int) -> Any:
    """Consumer i's rows of a block whose first row is row ``start`` of the dealt stream: a
    block, or a list of blocks (views of the block's chunks) when chunks are big."""
    rows = num_rows(block) if block else 0
    if rows and size_bytes(block) * chunk >= VIEW_CHUNK_BYTES * rows:
        parts: list[list[Block]] = [[] for _ in range(n)]
        a = start
        while a < start + rows:
            b = min(start + rows, (a // chunk + 1) * chunk)
            parts[(a // chunk) % n].append(slice_block(block, a - start, b - start))
            a = b
    else:
        owners = chunk_owners(start, rows, n, chunk)
        parts = [take_rows(block, np.nonzero(owners == i)[0]) for i in range(n)]
    return parts[0] if n == 1 else tuple(parts)


class SplitCoordinator:
    """Runs the dataset once per epoch and hands each consumer its blocks."""

    def __init__(self, ds: Dataset, n: int, equal: bool, ctx: DataContext | None = None):
        if ctx is not None:  # the driver's settings (budgets, order) hold in this actor too
            DataContext._current = ctx
        self.ds = ds
        self.n = n
        self.equal = equal
        self.epoch = -1
        self.gen: Iterator | None = None
        self.queues: list[deque] = []
        self.totals: list[int] = []
        self.target: int | None = None
        # the last refs handed to each consumer stay referenced here until it has fetched
        # them: one in use, its prefetch ahead, one more in the reply on its way (or until
        # it begins its next epoch)
        self.handed: dict[int, deque] = {}
        self.finished: set[int] = set()
        self.epoch_of: dict[int, int] = {}
        self.resume: tuple[int, int] | None = None  # (epoch, rows of it already used)
        self.skip = 0
        self.chunk = DEFAULT_CHUNK

    def load_state(self, epoch: int, rows: int) -> None:
        """Resume at row ``rows`` of epoch ``epoch`` (every consumer sends the same)."""
        if self.resume != (epoch, rows):
            self.resume = (epoch, rows)
            self.epoch_of = {}
            self.epoch = -1
            self.gen = None

    def schema(self) -> Any:
        return self.ds.schema()

    def begin(self, i: int, chunk: int | None, prefetch: int = 1) -> tuple[int, int]:
        """(epoch, rows skipped at its start) for consumer i starting its next epoch, which
        fetches prefetch blocks ahead; a restarted worker's fresh iterator joins where its
        predecessor was."""
        self.handed[i] = deque(maxlen=max(0, prefetch) + 3)
        first = self.resume[0] if self.resume else 0
        self.epoch_of[i] = self.epoch_of[i] + 1 if i in self.epoch_of else first
        if chunk:
            self.chunk = chunk
        epoch = self.epoch_of[i]
        skip = self.resume[1] if self.resume and epoch == self.resume[0] else 0
        return epoch, skip

    def _start(self, epoch: int) -> None:
        self.epoch = epoch
        self.gen = execute(self.ds._plan)
        self.queues = [deque() for _ in range(self.n)]
        self.totals = [0] * self.n
        self.target = None
        self.finished = set()
        self.skip = self.resume[1] if self.resume and epoch == self.resume[0] else 0
        self.pos = 0  # rows of the epoch seen so far
        self.dealt = 0  # rows dealt (after the skipped ones)

    def _pull(self, requester: int) -> bool:
        try:
            ref, meta = next(self.gen)
        except StopIteration:
            self.target = min(self.totals) if self.equal else None
            return False
        rows = meta["rows"]
        start, self.pos = self.pos, self.pos + rows
        if self.pos <= self.skip:
            return True
        if start < self.skip:  # the block the resumed epoch starts in
            ref = remote(slice_task, num_returns=2).remote(ref, self.skip - start, rows)[0]
            rows -= self.skip - start
        if not self.equal:
            self.queues[requester].append((ref, rows))
            self.totals[requester] += rows
            return True
        sizes = part_sizes(self.dealt, rows, self.n, self.chunk)
        parts = remote(_deal, num_returns=self.n).remote(ref, self.dealt, self.n, self.chunk)
        self.dealt += rows
        parts = [parts] if self.n == 1 else parts
        for owner, (part, size) in enumerate(zip(parts, sizes)):
            if size:
                self.queues[owner].append((part, size))
                self.totals[owner] += size
        return True

    def next(self, i: int, epoch: int) -> tuple:
        """("block", ref, rows), ("wait",) or ("end", rows consumer i may use in all)."""
        if epoch > self.epoch or self.gen is None:
            if self.epoch >= 0 and self.gen is not None and len(self.finished) < self.n:
                return ("wait",)  # the others are still in the last epoch
            self._start(epoch)
        elif epoch < self.epoch:
            return ("end", 0)
        while not self.queues[i] and self.target is None:
            if not self._pull(i):
                break
        if self.queues[i]:
            ref, rows = self.queues[i].popleft()
            self.handed.setdefault(i, deque(maxlen=4)).append(ref)
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
        self._chunk: int | None = None
        self._position = {"epoch": 0, "rows": 0}
        self._batches = 0

    def __reduce__(self):
        return (SplitIterator, (self._coord, self._index, self._n, self._equal))

    def iter_batches(self, *, batch_size: int | None = 256, **kwargs) -> Iterator[Any]:
        self._chunk = batch_size
        return _counting(self, super().iter_batches(batch_size=batch_size, **kwargs))

    def _count(self, batch: Any) -> Any:
        self._batches += 1
        return batch

    def state_dict(self) -> dict:
        """Where the consumers are: the epoch and how many of its rows all of them have
        used, if every consumer took as many batches as this one (as data-parallel training
        does). Save it in the checkpoint; ``load_state_dict`` on the restored run's
        iterators (any number of them) resumes with no row repeated or skipped."""
        if not self._equal:
            raise ValueError("state_dict() needs the iterators of streaming_split(n, "
                             "equal=True): only then is the consumers' position a row count")
        p = self._position
        return {"epoch": p["epoch"],
                "rows": p["rows"] + self._batches * self._n * (self._chunk or DEFAULT_CHUNK),
                "done": p.get("done", False)}

    def schema(self) -> Any:
        """The dataset's columns and types."""
        return hpcray.get(self._coord.schema.remote())

    def load_state_dict(self, state: dict) -> None:
        epoch, rows = state["epoch"], state["rows"]
        if state.get("done"):
            epoch, rows = epoch + 1, 0
        hpcray.get(self._coord.load_state.remote(epoch, rows))

    def _replies(self, epoch: int) -> Iterator[tuple]:
        """The coordinator's replies for this consumer's epoch, up to its "end"; the next
        request is always on its way while a reply is used."""
        ask = self._coord.next.remote(self._index, epoch)
        while True:
            msg = hpcray.get(ask)
            if msg[0] == "wait":
                time.sleep(0.005)
                ask = self._coord.next.remote(self._index, epoch)
                continue
            if msg[0] == "end":
                yield msg
                return
            ask = self._coord.next.remote(self._index, epoch)
            yield msg

    def _blocks(self, prefetch: int) -> Iterator[Block]:
        epoch, skip = hpcray.get(self._coord.begin.remote(self._index, self._chunk, prefetch))
        self._position = {"epoch": epoch, "rows": skip}
        self._batches = 0
        used = 0
        chunk = self._chunk or DEFAULT_CHUNK
        held: deque = deque()  # the last blocks, >= one chunk of rows, so the end can trim
        held_rows = 0
        self._prefetch = Prefetcher(self._replies(epoch), prefetch,
                                    lambda m: m[1].future() if m[0] == "block" else None)
        for msg, got in self._prefetch:
            if msg[0] == "end":
                limit = msg[1]
                excess = used - limit if limit is not None else 0
                out = []
                while held:
                    block, rows = held.pop()
                    cut = min(excess, rows)
                    excess -= cut
                    if rows - cut:
                        out.append(slice_block(block, 0, rows - cut))
                yield from reversed(out)
                self._position = {"epoch": epoch, "rows": 0, "done": True}
                self._batches = 0
                return
            for block in got if isinstance(got, list) else [got]:
                rows = num_rows(block)
                held.append((block, rows))
                held_rows += rows
            used += msg[2]
            while held and held_rows - held[0][1] >= chunk:
                b, r = held.popleft()
                held_rows -= r
                yield b


def _counting(it: SplitIterator, batches: Iterator[Any]) -> Iterator[Any]:
    for batch in batches:
        yield it._count(batch)


def streaming_split(ds: Dataset, n: int, equal: bool) -> list[DataIterator]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    coord = remote(SplitCoordinator, max_concurrency=1).remote(
        ds, n, equal, DataContext.get_current())
    return [SplitIterator(coord, i, n, equal) for i in range(n)]
