"""The head's actor table: where each actor lives, its name, and its calls in order.

Plain bookkeeping without MPI (it reaches ranks only through ``send(rank, message)``), so
it is tested in-process. Scheduling and failing the calls of a dead actor stay with the head.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ... import exceptions as E
from . import protocol as P


class Actor:
    """An actor: where it lives and the calls waiting to be sent to it, in order."""

    __slots__ = (
        "actor_id",
        "cause",
        "create",
        "dead",
        "detached",
        "inflight",
        "lifetime",
        "name",
        "namespace",
        "orphaned",
        "queue",
        "rank",
        "restarts",
        "restarts_left",
        "task_retries",
    )

    def __init__(self, create: Any):
        spec = create.spec
        self.actor_id = spec.actor_id
        self.create = create               # the head's Task that creates it
        self.rank: int | None = None
        self.dead = False
        self.cause = ""
        self.name = spec.options.get("name")
        self.namespace = spec.options.get("namespace") or ""
        self.detached = spec.options.get("lifetime") == "detached"
        self.queue: collections.deque = collections.deque()   # calls not sent yet
        self.inflight: set[int] = set()                        # ids of calls sent
        self.lifetime = spec.options.get("lifetime_resources", {})
        self.orphaned = False
        self.restarts_left = int(spec.options.get("max_restarts") or 0)  # -1: without end
        self.restarts = 0
        self.task_retries = int(spec.options.get("max_task_retries") or 0)  # -1: without end

    @property
    def class_name(self) -> str:
        return self.create.spec.name.split(".")[0]

    @property
    def idle(self) -> bool:
        return not self.inflight and not self.queue


def died_error(actor: Actor | None, name: str) -> E.ActorDiedError:
    """The error of a call (``name``) to a dead or unknown actor."""
    why = actor.cause if actor is not None else "it does not exist"
    return E.ActorDiedError(f"the actor is dead ({why}), so {name} cannot run")


class ActorTable:
    """Actors by id and by name."""

    def __init__(self, send: Callable[[int, tuple], None]):
        self.send = send
        self.actors: dict[int, Actor] = {}
        self.named: dict[tuple[str, str], int] = {}  # (namespace, name) -> actor id

    def get(self, actor_id: int) -> Actor | None:
        return self.actors.get(actor_id)

    def __getitem__(self, actor_id: int) -> Actor:
        return self.actors[actor_id]

    def add(self, create: Any) -> Actor:
        """A new actor from its creation task; ValueError if its name is taken by a live one."""
        actor = Actor(create)
        if actor.name:
            key = (actor.namespace, actor.name)
            taken = self.named.get(key)
            if taken is not None and not self.actors[taken].dead:
                raise ValueError(f"an actor named {actor.name!r} already exists"
                                 f"{_in(actor.namespace)}; pick another name or use "
                                 "get_actor()/options(get_if_exists=True)")
            self.named[key] = actor.actor_id
        self.actors[actor.actor_id] = actor
        return actor

    def by_name(self, name: str, namespace: str = "") -> Actor:
        actor_id = self.named.get((namespace, name))
        actor = self.actors.get(actor_id) if actor_id is not None else None
        if actor is None or actor.dead:
            raise ValueError(f"no live actor named {name!r}{_in(namespace)}")
        return actor

    def next_calls(self, actor: Actor, pending: Callable[[Any], bool]) -> list:
        """Pops the queued calls that may be sent now, in submission order: while the actor
        is placed and alive and the first call's arguments are ready. ``pending(task)``
        says whether a call is still wanted (not cancelled or failed meanwhile)."""
        ready = []
        if actor.rank is None:
            return ready
        queue = actor.queue
        while queue and not actor.dead and queue[0].waiting == 0:
            task = queue.popleft()
            if pending(task):
                actor.inflight.add(task.spec.task_id)
                ready.append(task)
        return ready

    def end(self, actor: Actor, cause: str, notify: bool) -> tuple[set[int], list]:
        """Marks the actor dead (telling its rank to drop it when ``notify``); returns the ids
        of the calls it was running and the calls still queued, for the head to fail."""
        actor.dead = True
        actor.cause = cause
        key = (actor.namespace, actor.name)
        if actor.name and self.named.get(key) == actor.actor_id:
            del self.named[key]
        if notify and actor.rank is not None:
            self.send(actor.rank, (P.KILL_ACTOR, actor.actor_id))
        inflight, queued = set(actor.inflight), list(actor.queue)
        actor.queue.clear()
        actor.inflight.clear()
        return inflight, queued

    @staticmethod
    def restart(actor: Actor, cause: str) -> list[int]:
        """The actor's process died and it may restart: takes one restart; returns the ids of
        the calls it was running, for the head to retry in order (as each call's
        max_task_retries allows) or fail."""
        actor.restarts_left -= actor.restarts_left > 0
        actor.restarts += 1
        actor.cause = cause
        inflight = sorted(actor.inflight)
        actor.inflight.clear()
        return inflight

    @staticmethod
    def may_restart(actor: Actor) -> bool:
        return not actor.dead and actor.restarts_left != 0

    def orphan(self, actor_id: int) -> Actor | None:
        """Every handle to the actor is gone: returns it if it should end now (it is not
        detached, and it has no calls left; otherwise it ends after its last call)."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.detached:
            return None
        actor.orphaned = True
        return actor if self.should_end(actor) else None

    @staticmethod
    def should_end(actor: Actor) -> bool:
        return actor.orphaned and actor.idle and not actor.dead

    def remove(self, actor_id: int) -> None:
        self.actors.pop(actor_id, None)

    def names(self, namespace: str | None) -> list[tuple[str, str]]:
        """(namespace, name) of the live named actors, in one namespace or (None) all."""
        return sorted(key for key, actor_id in self.named.items()
                      if not self.actors[actor_id].dead
                      and (namespace is None or key[0] == namespace))

    def on_rank(self, rank: int) -> list[Actor]:
        return [actor for actor in self.actors.values() if actor.rank == rank]


def _in(namespace: str) -> str:
    return f" in namespace {namespace!r}" if namespace else ""
