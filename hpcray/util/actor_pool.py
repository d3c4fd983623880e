"""A fixed set of actors working through submitted values, as ``ray.util.ActorPool`` does."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import hpcray

__all__ = ["ActorPool"]

V = TypeVar("V")

# What ``fn(actor, value)`` returns: one ObjectRef, or a list of them (``num_returns > 1``).
Future = Any
SubmitFn = Callable[[Any, V], Future]

_TIMEOUT_MSG = "Timed out waiting for result"


def _refs(future: Future) -> list[Any]:
    """The ObjectRefs behind one submission."""
    return list(future) if isinstance(future, (list, tuple)) else [future]


def _key(future: Future) -> Any:
    """A hashable key for a submission (a list of refs is not hashable)."""
    return tuple(future) if isinstance(future, list) else future


class ActorPool:
    """Run ``fn(actor, value)`` calls over a fixed set of actors, one call per actor at a time.

    Values submitted while every actor is busy wait in a queue and start as actors come free.
    Results come back in submission order (``get_next``) or as they finish
    (``get_next_unordered``); an error raised by a call is re-raised by the getter.
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle_actors: list[Any] = list(actors)
        # key of each running submission -> (its index, the actor running it)
        self._future_to_actor: dict[Any, tuple[int, Any]] = {}
        self._index_to_future: dict[int, Future] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: deque[tuple[SubmitFn, Any]] = deque()

    def map(self, fn: SubmitFn, values: Iterable[V]) -> Iterator[Any]:
        """Apply ``fn(actor, v)`` to every value; yield the results in input order.

        Results left from earlier submissions are discarded first, errors included.
        """
        self._discard_pending()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next)

    def map_unordered(self, fn: SubmitFn, values: Iterable[V]) -> Iterator[Any]:
        """Apply ``fn(actor, v)`` to every value; yield the results as they finish."""
        self._discard_pending()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next_unordered)

    def submit(self, fn: SubmitFn, value: V) -> None:
        """Start ``fn(actor, value)`` on an idle actor, or queue it until one is free.

        ``fn`` must call one actor method with ``.remote()`` and return its ObjectRef(s).
        """
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        future = fn(actor, value)
        index = self._next_task_index
        self._future_to_actor[_key(future)] = (index, actor)
        self._index_to_future[index] = future
        self._next_task_index += 1

    def has_next(self) -> bool:
        """Whether any submitted call has a result still to collect."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Return the next result in submission order, blocking until it is ready.

        Raises StopIteration when nothing is pending and TimeoutError when the result is not
        ready within ``timeout`` seconds; with ``ignore_if_timedout`` that call is then
        dropped (its actor goes back into the pool) before the TimeoutError is raised.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        index = self._next_return_index
        future = self._index_to_future[index]
        timed_out = False
        if timeout is not None:
            refs = _refs(future)
            ready, _ = hpcray.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                if not ignore_if_timedout:
                    raise TimeoutError(_TIMEOUT_MSG)
                timed_out = True
        del self._index_to_future[index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(_key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """Return whichever pending result is ready first, blocking until one is.

        Raises StopIteration when nothing is pending and TimeoutError when nothing is ready
        within ``timeout`` seconds; with ``ignore_if_timedout`` the oldest pending call is
        then dropped before the TimeoutError is raised. Mixing this with ``get_next`` makes
        later ``get_next`` calls fail.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        # One representative ref per submission: refs of one task finish together.
        probes = {_refs(key)[0]: key for key in self._future_to_actor}
        ready, _ = hpcray.wait(list(probes), num_returns=1, timeout=timeout)
        if ready:
            key = probes[ready[0]]
        elif not ignore_if_timedout:
            raise TimeoutError(_TIMEOUT_MSG)
        else:
            key = min(self._future_to_actor, key=lambda k: self._future_to_actor[k][0])
        index, actor = self._future_to_actor.pop(key)
        future = self._index_to_future.pop(index)
        self._next_return_index = max(self._next_return_index, index + 1)
        if not ready:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool; None if none is free."""
        return self._idle_actors.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it starts on a queued submission if there is one)."""
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    def _get_result(self, future: Future, actor: Any) -> Any:
        """Fetch a finished call's value and put its actor back, unless the actor died."""
        alive = True
        try:
            return hpcray.get(future)
        except hpcray.exceptions.ActorDiedError:
            alive = False
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor: Any, alive: bool = True) -> None:
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.popleft())

    def _discard_pending(self) -> None:
        """Drop the results of earlier submissions, before a new map.

        Their actors go back into the pool as if those results had been collected, so
        submissions still queued start (and are dropped in turn), as in Ray.
        """
        while self._future_to_actor:
            key = next(iter(self._future_to_actor))  # the oldest
            index, actor = self._future_to_actor.pop(key)
            del self._index_to_future[index]
            self._return_actor(actor)
        self._next_return_index = self._next_task_index

    def _results(self, getter: Callable[[], Any]) -> Iterator[Any]:
        while self.has_next():
            yield getter()
