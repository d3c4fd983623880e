"""A first-in first-out queue shared by tasks and actors, as ``ray.util.queue`` provides.

The items live in one async actor holding an ``asyncio.Queue``; a ``Queue`` object is only a
handle to that actor, so it pickles and can be passed to tasks and actors.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterable
from typing import Any

import hpcray

__all__ = ["Empty", "Full", "Queue"]


class Empty(queue.Empty):
    """Raised when getting from an empty queue without blocking, or past a timeout."""


class Full(queue.Full):
    """Raised when putting into a full queue without blocking, or past a timeout."""


# The actor answers (status, value) instead of raising, so callers get plain Empty/Full.
_OK, _EMPTY, _FULL = 0, 1, 2


def _unwrap(answer: tuple[int, Any]) -> Any:
    status, value = answer
    if status == _EMPTY:
        raise Empty(*value)
    if status == _FULL:
        raise Full(*value)
    return value


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A FIFO queue held by an actor, usable from the driver, tasks and actors.

    ``maxsize <= 0`` means unbounded. ``actor_options`` go to ``.options()`` of the actor
    that holds the items (e.g. ``{"num_cpus": 0}`` or a ``name``).
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        self.maxsize = maxsize
        actor_cls = hpcray.remote(_QueueActor).options(**(actor_options or {}))
        self.actor = actor_cls.remote(self.maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue now."""
        return hpcray.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue now (same as ``size``)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no items now."""
        return hpcray.get(self.actor.empty.remote())

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items now."""
        return hpcray.get(self.actor.full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item, waiting up to ``timeout`` seconds (forever if None) for a free slot.

        Raises Full if no slot frees in time, or at once when ``block`` is False.
        """
        if not block:
            _unwrap(hpcray.get(self.actor.put_nowait.remote(item)))
            return
        _check_timeout(timeout)
        _unwrap(hpcray.get(self.actor.put.remote(item, timeout)))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item, waiting up to ``timeout`` seconds for one.

        Raises Empty if none arrives in time, or at once when ``block`` is False.
        """
        if not block:
            return _unwrap(hpcray.get(self.actor.get_nowait.remote()))
        _check_timeout(timeout)
        return _unwrap(hpcray.get(self.actor.get.remote(timeout)))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for use inside a coroutine: awaits instead of blocking the event loop."""
        if not block:
            _unwrap(await _resolve(self.actor.put_nowait.remote(item)))
            return
        _check_timeout(timeout)
        _unwrap(await _resolve(self.actor.put.remote(item, timeout)))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for use inside a coroutine: awaits instead of blocking the event loop."""
        if not block:
            return _unwrap(await _resolve(self.actor.get_nowait.remote()))
        _check_timeout(timeout)
        return _unwrap(await _resolve(self.actor.get.remote(timeout)))

    def put_nowait(self, item: Any) -> None:
        """Add an item if a slot is free now, else raise Full."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all items at once, or none of them (raising Full) if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _unwrap(hpcray.get(self.actor.put_nowait_batch.remote(list(items))))

    def get_nowait(self) -> Any:
        """Remove and return the oldest item if there is one, else raise Empty."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return the ``num_items`` oldest items, or raise Empty if fewer are held."""
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _unwrap(hpcray.get(self.actor.get_nowait_batch.remote(num_items)))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the actor holding the items; the queue is unusable afterwards.

        Without ``force``, calls already sent may finish first, for up to ``grace_period_s``.
        """
        if not self.actor:
            return
        actor, self.actor = self.actor, None
        if force or not _terminate(actor, grace_period_s):
            hpcray.kill(actor, no_restart=True)


def _terminate(actor: Any, grace_period_s: float) -> bool:
    """Ask the actor to exit after the calls already sent; whether it did in time."""
    try:
        done_ref = actor.__ray_terminate__.remote()
        done, _ = hpcray.wait([done_ref], timeout=grace_period_s)
        if not done:
            return False
        hpcray.get(done_ref)
    except hpcray.exceptions.ActorDiedError:  # it exited before answering
        return True
    except (AttributeError, hpcray.exceptions.RayError):  # no graceful exit here
        return False
    return True


async def _resolve(ref: Any) -> Any:
    """Await an ObjectRef's value without blocking the running event loop."""
    if hasattr(ref, "__await__"):
        return await ref
    return await asyncio.get_running_loop().run_in_executor(None, hpcray.get, ref)


class _QueueActor:
    """The actor holding a Queue's items; its coroutines interleave on one event loop.

    Every method is a coroutine so that all of them touch the asyncio.Queue from that loop.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> tuple[int, Any]:
        if not self.queue.full():  # a free slot now: take it even with timeout=0
            self.queue.put_nowait(item)
            return _OK, None
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except TimeoutError:
            return _FULL, ()
        return _OK, None

    async def get(self, timeout: float | None = None) -> tuple[int, Any]:
        if not self.queue.empty():  # an item now: return it even with timeout=0
            return _OK, self.queue.get_nowait()
        try:
            return _OK, await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return _EMPTY, ()

    async def put_nowait(self, item: Any) -> tuple[int, Any]:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return _FULL, ()
        return _OK, None

    async def put_nowait_batch(self, items: list[Any]) -> tuple[int, Any]:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            message = (
                f"Cannot add {len(items)} items to queue of size "
                f"{self.queue.qsize()} and maxsize {self.maxsize}."
            )
            return _FULL, (message,)
        for item in items:
            self.queue.put_nowait(item)
        return _OK, None

    async def get_nowait(self) -> tuple[int, Any]:
        try:
            return _OK, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return _EMPTY, ()

    async def get_nowait_batch(self, num_items: int) -> tuple[int, Any]:
        if num_items > self.queue.qsize():
            message = f"Cannot get {num_items} items from queue of size {self.queue.qsize()}."
            return _EMPTY, (message,)
        return _OK, [self.queue.get_nowait() for _ in range(num_items)]
