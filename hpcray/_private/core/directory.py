"""The head's object directory: every object's reference count, where its copies are, who
waits for it and which tasks depend on it.

Plain bookkeeping without MPI: it reaches ranks only through ``send(rank, message)`` and
rank 0's own store through the ``local`` callbacks, so it is tested in-process. What to do
with the tasks that depended on an object is left to its owner (the head).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from ... import exceptions as E
from . import protocol as P
from .serialization import inline_blob


class Entry:
    """The head's record of one object."""

    __slots__ = (
        "actor_id",
        "contained",
        "dependents",
        "inline",
        "locations",
        "producer",
        "ready",
        "refs",
        "size",
        "waiters",
    )

    def __init__(self, refs: int, producer: int = 0):
        self.refs = refs
        self.ready = False
        self.inline: tuple | None = None   # (header, buffers, error) when small or an error
        self.size = 0
        self.locations: set[int] = set()   # ranks holding (or being sent) a stored copy
        self.waiters: set[int] = set()     # ranks that asked for it
        self.dependents: list = []         # the head's tasks waiting for it
        self.contained: list[int] = []
        self.producer = producer
        self.actor_id = 0                  # an actor handle: dropping it ends the actor


class LocalCopies:
    """What the directory asks of rank 0's own object store."""

    def add(self, object_id: int, blob: tuple) -> None:
        """Store a small value (or error) delivered to rank 0."""

    def push(self, object_id: int, dest: int) -> None:
        """Send rank 0's stored copy to dest."""

    def free(self, object_id: int) -> None:
        """Drop rank 0's copy."""


def error_blob(exc: BaseException) -> tuple:
    """An exception as an object's inline value (what get() raises)."""
    return inline_blob(exc, error=True)


class ObjectDirectory:
    """Objects by id; see the module's docstring."""

    def __init__(self, send: Callable[[int, tuple], None], local: LocalCopies,
                 alive: Callable[[int], bool] = lambda rank: True,
                 handle_dropped: Callable[[int], None] = lambda actor_id: None):
        self.entries: dict[int, Entry] = {}
        self.send = send
        self.local = local
        self.alive = alive
        self.handle_dropped = handle_dropped  # the last ref to an actor's handle went away
        self.free_out: dict[int, list[int]] = collections.defaultdict(list)

    def get(self, object_id: int) -> Entry | None:
        return self.entries.get(object_id)

    def __getitem__(self, object_id: int) -> Entry:
        return self.entries[object_id]

    def add(self, object_id: int, refs: int = 1, producer: int = 0) -> Entry:
        """A new object, not ready yet (a task's return value, a placement group's signal)."""
        entry = self.entries[object_id] = Entry(refs, producer)
        return entry

    def discard(self, object_id: int) -> None:
        self.entries.pop(object_id, None)

    # -- references ------------------------------------------------------------------------
    def ref_change(self, object_id: int, delta: int) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.refs += delta
            if entry.refs <= 0:
                self.free(object_id, entry)

    def pin(self, ids) -> None:
        for object_id in ids:
            entry = self.entries.get(object_id)
            if entry is not None:
                entry.refs += 1

    def unpin(self, ids) -> None:
        for object_id in ids:
            self.ref_change(object_id, -1)

    def free(self, object_id: int, entry: Entry) -> None:
        del self.entries[object_id]
        for rank in entry.locations:
            if rank == 0:
                self.local.free(object_id)
            else:
                self.free_out[rank].append(object_id)
        self.unpin(entry.contained)
        if entry.actor_id:
            self.handle_dropped(entry.actor_id)

    def flush(self) -> None:
        """Sends the FREE messages batched while handling."""
        if self.free_out:
            for rank, ids in self.free_out.items():
                if self.alive(rank):
                    self.send(rank, (P.FREE, ids))
            self.free_out.clear()

    # -- values ------------------------------------------------------------------------------
    def put(self, src: int, object_id: int, inline, size: int, contained: list) -> None:
        """An object stored by rank src (ready at once)."""
        entry = self.entries[object_id] = Entry(1)
        entry.ready, entry.inline, entry.size = True, inline, size
        entry.locations.add(src)
        entry.contained = contained
        self.pin(contained)

    def mark_ready(self, object_id: int, inline=None, location: int | None = None,
                   size: int = 0, contained=()) -> list:
        """The object's value exists (inline, or stored on ``location``): waiting ranks get
        it. Returns the tasks that depended on it, for the owner to move on."""
        entry = self.entries.get(object_id)
        if entry is None:  # every ref was dropped while it was computed
            if location:
                self.free_out[location].append(object_id)
            return []
        entry.ready, entry.inline, entry.size = True, inline, size
        if location is not None:
            entry.locations.add(location)
        if contained:
            entry.contained = list(contained)
            self.pin(contained)
        for rank in entry.waiters:
            self.deliver(object_id, entry, rank)
        entry.waiters.clear()
        dependents, entry.dependents = entry.dependents, []
        return dependents

    def want(self, src: int, ids: list) -> None:
        """Rank src asked for these objects: delivered when ready (an error if freed)."""
        for object_id in ids:
            entry = self.entries.get(object_id)
            if entry is None:
                self.send_inline(src, object_id, error_blob(E.ObjectFreedError(
                    f"object {object_id:016x} was freed: no ObjectRef to it was left")))
            elif entry.ready:
                self.deliver(object_id, entry, src)
            else:
                entry.waiters.add(src)

    def send_inline(self, rank: int, object_id: int, blob: tuple) -> None:
        header, buffers, error = blob
        if rank == 0:
            self.local.add(object_id, blob)
        else:
            self.send(rank, (P.OBJ, object_id, header, buffers, error))

    def deliver(self, object_id: int, entry: Entry, rank: int) -> None:
        """Makes sure ``rank`` gets a copy: inline from here, else pushed by a holder."""
        if rank in entry.locations:
            return
        if entry.inline is not None:
            self.send_inline(rank, object_id, entry.inline)
        else:
            source = min(entry.locations)
            if source == 0:
                self.local.push(object_id, rank)
            else:
                self.send(source, (P.PUSH, object_id, rank))
        entry.locations.add(rank)

    def rank_lost(self, rank: int, lost: BaseException) -> tuple[tuple, list]:
        """Forgets rank's copies and waits. The objects whose only copy it held now hold the
        error ``lost``; returns that error's blob and the tasks that depended on them."""
        blob = error_blob(lost)
        dependents: list = []
        for object_id, entry in list(self.entries.items()):
            entry.waiters.discard(rank)
            if rank in entry.locations:
                entry.locations.discard(rank)
                if entry.ready and entry.inline is None and not entry.locations:
                    entry.ready = False
                    dependents += self.mark_ready(object_id, blob)
        self.free_out.pop(rank, None)
        return blob, dependents
