"""Choosing a replica for each request: power of two choices, with a bounded queue.

Pure logic, no MPI and no locks: the handle owning a Router serializes calls to it.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Hashable
from typing import Any

#: With max_queued_requests=None (the default), HTTP requests queue up to this many times what
#: the running replicas take at once (max_ongoing_requests each), and at least HTTP_QUEUE_MIN;
#: handle calls queue without bound, as in Ray. An HTTP client past that gets a 503 at once.
HTTP_QUEUE_FACTOR = 4
HTTP_QUEUE_MIN = 16


class BackPressureError(Exception):
    """Every replica is at max_ongoing_requests and the queue holds max_queued_requests."""


def queue_limit(max_queued: int | None, max_ongoing: int, replicas: int, http: bool) -> int:
    """How many requests may wait in a caller's queue (-1: no limit)."""
    if max_queued is not None:
        return max_queued
    if not http:
        return -1
    return max(HTTP_QUEUE_MIN, HTTP_QUEUE_FACTOR * max_ongoing * replicas)


class Router:
    """Tracks this process's ongoing requests per replica and queues what cannot go yet."""

    def __init__(self, max_ongoing: int, max_queued: int | None = -1,
                 rng: random.Random | None = None):
        self.max_ongoing = max_ongoing
        self.max_queued = max_queued
        self.ongoing: dict[Hashable, int] = {}
        self.queue: collections.deque = collections.deque()
        self.rng = rng or random.Random()

    def set_replicas(self, replicas) -> None:
        """Replaces the set of replicas; counts of replicas that stay are kept."""
        self.ongoing = {r: self.ongoing.get(r, 0) for r in replicas}

    def remove(self, replica: Hashable) -> None:
        self.ongoing.pop(replica, None)

    def choose(self) -> Hashable | None:
        """A replica with room, the less loaded of two drawn at random; None when all are full."""
        free = [r for r, n in self.ongoing.items() if n < self.max_ongoing]
        if not free:
            return None
        if len(free) == 1:
            return free[0]
        a, b = self.rng.sample(free, 2)
        return a if self.ongoing[a] <= self.ongoing[b] else b

    def acquire(self, item: Any, http: bool = False) -> Hashable | None:
        """The replica for item now, or None when it was queued; raises BackPressureError.

        http: the item is an HTTP request (bounded by default, see queue_limit)."""
        if not self.queue:
            replica = self.choose()
            if replica is not None:
                self.ongoing[replica] += 1
                return replica
        limit = queue_limit(self.max_queued, self.max_ongoing, len(self.ongoing), http)
        if 0 <= limit <= len(self.queue):
            raise BackPressureError(
                f"{len(self.ongoing)} replica(s) each at max_ongoing_requests={self.max_ongoing} "
                f"and {len(self.queue)} requests queued (max_queued_requests="
                f"{self.max_queued if self.max_queued is not None else f'None: {limit} for HTTP'})")
        self.queue.append(item)
        return None

    def release(self, replica: Hashable) -> None:
        """A request on replica ended."""
        if replica in self.ongoing and self.ongoing[replica] > 0:
            self.ongoing[replica] -= 1

    def take_ready(self) -> list[tuple[Any, Hashable]]:
        """Queued items that may go now, each with its replica (counted as ongoing)."""
        out = []
        while self.queue:
            replica = self.choose()
            if replica is None:
                break
            self.ongoing[replica] += 1
            out.append((self.queue.popleft(), replica))
        return out

    def drop_queued(self) -> list[Any]:
        items = list(self.queue)
        self.queue.clear()
        return items

    @property
    def num_ongoing(self) -> int:
        return sum(self.ongoing.values())

    @property
    def num_queued(self) -> int:
        return len(self.queue)
