"""Objects on one rank: the local store and per-rank reference counting.

Counting is two-level. Each process counts its live ObjectRef instances per id
and tells the head only when a count goes 0 -> 1 or 1 -> 0; the head frees an
object everywhere once no rank holds it and no task or object pins it.
"""

from __future__ import annotations

import collections
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from . import hooks
from .serialization import deserialize

# (object id, event): +1 a ref appeared, -1 one was dropped, 0 a ref created by
# this rank's own submit/put, which the head already counts.
ADD, DROP, CREATED = 1, -1, 0
ref_events: collections.deque = collections.deque()


class RefTracker:
    """Turns ObjectRef construction/destruction events into per-rank transitions."""

    def __init__(self):
        self.counts: dict[int, int] = {}

    def drain(self) -> list[tuple[int, int]]:
        """Returns (id, +1|-1) for ids this rank started or stopped holding."""
        changes = []
        counts = self.counts
        pop = ref_events.popleft
        while ref_events:  # (cheap; an exception at the end of every drain was not)
            try:
                object_id, event = pop()
            except IndexError:  # another thread drained it meanwhile
                break
            before = counts.get(object_id, 0)
            after = before + (1 if event == CREATED else event)
            if after:
                counts[object_id] = after
            else:
                del counts[object_id]
            if event != CREATED and (before == 0 or after == 0):
                changes.append((object_id, event))
        return changes


@dataclass
class Stored:
    """A serialized value held by this rank."""

    header: bytes
    buffers: list
    error: bool = False          # the value is an exception for get() to raise
    sending: list | None = None  # MPI requests still reading borrowed buffers
    segment: Any = None          # the node-store segment holding the buffers (shm.Segment)

    def value(self):
        """The value; arrays in it are read-only views of the stored buffers, as in Ray."""
        return deserialize(self.header, [b if hooks.is_device(b) else memoryview(b).toreadonly()
                                         for b in self.buffers])


class Waiter:
    """Counts arrivals of the ids a get/wait is waiting for (O(1) per arrival)."""

    __slots__ = ("arrived", "callback", "failed")

    def __init__(self, callback=None):
        self.arrived = 0
        self.failed = False  # an error arrived among them
        self.callback = callback  # run by Runtime.run_fired once the rank lock is released


@dataclass
class LocalStore:
    """Values present on this rank, and threads waiting for them."""

    objects: dict[int, Stored] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    watchers: dict[int, list[Waiter]] = field(default_factory=dict)
    fired: list = field(default_factory=list)  # callbacks of arrived ids, not yet run
    segments: Any = None  # freed node-store segments go back here (shm.SegmentPool)

    def __contains__(self, object_id: int) -> bool:
        return object_id in self.objects

    def get(self, object_id: int) -> Stored | None:
        return self.objects.get(object_id)

    def watch(self, ids, callback=None) -> Waiter:
        """A Waiter counting the ids of ``ids`` (absent now) as they arrive; hold the rank lock."""
        waiter = Waiter(callback)
        watchers = self.watchers
        for object_id in ids:
            watchers.setdefault(object_id, []).append(waiter)
        return waiter

    def unwatch(self, ids, waiter: Waiter) -> None:
        watchers = self.watchers
        for object_id in ids:
            waiting = watchers.get(object_id)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del watchers[object_id]

    def add(self, object_id: int, stored: Stored) -> None:
        self.objects[object_id] = stored
        waiting = self.watchers.pop(object_id, None)
        if waiting is not None:
            for waiter in waiting:
                waiter.arrived += 1
                if stored.error:
                    waiter.failed = True
                if waiter.callback is not None:
                    self.fired.append(waiter.callback)
            with self.cond:
                self.cond.notify_all()

    def free(self, object_ids, pool=None) -> None:
        """Drops values; buffers no user array still references go back to ``pool``."""
        for object_id in object_ids:
            stored = self.objects.pop(object_id, None)
            if stored is not None and stored.segment is not None and self.segments is not None:
                segment, stored.segment, stored.buffers = stored.segment, None, []
                self.segments.give(segment)
                continue
            if pool is not None and stored is not None:
                buffers, stored.buffers = stored.buffers, []
                while buffers:
                    buf = buffers.pop()
                    if sys.getrefcount(buf) == 2:  # only `buf` and getrefcount's argument
                        pool.give(buf)

