"""Collective-group rendezvous, hosted by the head: members find each other's MPI ranks.

Pure bookkeeping (no MPI), tested in-process. Members of a group (actors on worker ranks)
``join`` and poll until the group is complete. Creating the group's MPI communicator
(MPI_Comm_create_group) blocks its callers until every member called it, so groups that
share an MPI rank are granted creation one at a time: two such groups created at once in
opposite orders on two ranks would deadlock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .types import CollectiveGroupError


class RendezvousError(ValueError):
    """A join that can never succeed (bad rank, size or backend, two members on one rank)."""


class Instance:
    """One incarnation of a named group: its members and creation state."""

    __slots__ = (
        "backend",
        "created",
        "error",
        "gone",
        "granted_at",
        "id",
        "left",
        "members",
        "name",
        "world_size",
    )

    def __init__(self, instance_id: int, name: str, world_size: int, backend: str):
        self.id = instance_id
        self.name = name
        self.world_size = world_size
        self.backend = backend
        self.members: dict[int, tuple] = {}   # group rank -> (mpi rank, member key)
        self.created: set[int] = set()
        self.left: set[int] = set()
        self.granted_at: float | None = None
        self.error: str | None = None
        self.gone: str | None = None  # a member died or was killed: why (the group is broken)

    def complete(self) -> bool:
        return len(self.members) == self.world_size

    def mpi_ranks(self) -> list[int]:
        return [self.members[r][0] for r in range(self.world_size)]


class GroupRendezvous:
    """Named groups: declarations from the driver, joins from members, creation grants."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, hold_timeout: float = 60.0):
        self.clock = clock
        self.hold_timeout = hold_timeout
        self.declared: dict[str, dict] = {}
        self.forming: dict[str, Instance] = {}
        self.instances: dict[int, Instance] = {}
        self.member_of: dict[tuple, int] = {}      # (name, member key) -> instance id
        self.queue: list[Instance] = []            # complete, waiting for a creation grant
        self.holds: dict[int, int] = {}            # mpi rank -> instance id creating on it
        self.arrived: dict[tuple, set[int]] = {}   # (instance id, seq) -> group ranks
        self.next_id = 1
        self.ended: set = set()  # members' actors ended for good: their threads may linger

    def call(self, action: str, *args) -> Any:
        """The head's entry point: one method per action."""
        if action not in ("declare", "lookup", "join", "withdraw", "created", "leave", "destroy",
                          "arrive", "arrivals"):  # (member_gone is the head's own hook)
            raise ValueError(f"unknown rendezvous action {action!r}")
        return getattr(self, action)(*args)

    # -- the driver's side ----------------------------------------------------------------
    def declare(self, name: str, actor_ranks: dict[int, int], world_size: int,
                backend: str) -> None:
        """create_collective_group: remembers which actor is which rank of the group."""
        if name in self.declared:
            raise RendezvousError(f"collective group {name!r} was already declared; destroy it "
                                  "first or pick another group_name")
        self.declared[name] = {"actors": dict(actor_ranks), "world_size": world_size,
                               "backend": backend}

    def lookup(self, name: str, actor_id: int) -> tuple | None:
        """(world_size, rank, backend) of actor_id in a declared group, or None."""
        decl = self.declared.get(name)
        if decl is None or actor_id not in decl["actors"]:
            return None
        return decl["world_size"], decl["actors"][actor_id], decl["backend"]

    def destroy(self, name: str) -> None:
        """Forgets the declaration and the members still forming the group."""
        self.declared.pop(name, None)
        inst = self.forming.pop(name, None)
        if inst is not None:
            for _, key in inst.members.values():
                self.member_of.pop((name, key), None)

    # -- the members' side ----------------------------------------------------------------
    def join(self, name: str, world_size: int, rank: int, backend: str, mpi_rank: int,
             key: Any) -> dict:
        """Registers a member (idempotent: members poll with it); returns the group's state.

        ``{"state": "waiting", "missing": [...]}`` until every rank joined, then ``"queued"``
        until creation is granted, then ``{"state": "go", "mpi_ranks", "instance", "tag"}``.
        """
        if key in self.ended:  # (an in-rank actor's thread lives on after hpcray.kill())
            raise CollectiveGroupError(f"group {name!r}: this actor was ended; it joins no group")
        decl = self.declared.get(name)
        if decl is not None and decl.get("gone") and key in decl["actors"]:
            self.withdraw(name, key)
            raise CollectiveGroupError(decl["gone"])
        inst_id = self.member_of.get((name, key))
        if inst_id is None:
            inst = self._add_member(name, world_size, rank, backend, mpi_rank, key)
        else:
            inst = self.instances[inst_id]
        self._expire_holds()
        if inst.gone and inst.error:  # a member died before the group formed
            self._drop_member(inst, key)
            raise CollectiveGroupError(inst.error)
        if inst.error:
            raise RendezvousError(inst.error)
        if not inst.complete():
            return {"state": "waiting",
                    "missing": [r for r in range(inst.world_size) if r not in inst.members]}
        if inst.granted_at is None:
            return {"state": "queued"}
        return {"state": "go", "mpi_ranks": inst.mpi_ranks(), "instance": inst.id,
                "tag": 1000 + inst.id % 30000}

    def _add_member(self, name, world_size, rank, backend, mpi_rank, key) -> Instance:
        if not isinstance(world_size, int) or world_size < 1:
            raise RendezvousError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise RendezvousError(f"rank must be in [0, {world_size}), got {rank!r}")
        inst = self.forming.get(name)
        if inst is None:
            inst = self.forming[name] = Instance(self.next_id, name, world_size, backend)
            self.instances[inst.id] = inst
            self.next_id += 1
        if inst.world_size != world_size:
            raise RendezvousError(f"group {name!r}: this member says world_size={world_size}, "
                                  f"members already joined say {inst.world_size}")
        if inst.backend != backend:
            raise RendezvousError(f"group {name!r}: this member says backend={backend!r}, members "
                                  f"already joined say {inst.backend!r}")
        if rank in inst.members:
            raise RendezvousError(f"group {name!r}: rank {rank} was already joined by a member on "
                                  f"MPI rank {inst.members[rank][0]}")
        inst.members[rank] = (mpi_rank, key)
        self.member_of[(name, key)] = inst.id
        if inst.complete():
            del self.forming[name]
            by_mpi: dict[int, list[int]] = {}
            for r, (m, _) in sorted(inst.members.items()):
                by_mpi.setdefault(m, []).append(r)
            shared = {m: rs for m, rs in by_mpi.items() if len(rs) > 1}
            if shared and backend == "mpi":
                where = "; ".join(f"ranks {rs} on MPI rank {m}" for m, rs in shared.items())
                inst.error = (f"group {name!r}: members share an MPI rank ({where}); the MPI "
                              "backend needs one member per rank: create the actors with "
                              "num_cpus=1 or in a placement group with one bundle per member")
            else:
                self.queue.append(inst)
                self._grant()
        return inst

    def withdraw(self, name: str, key: Any) -> None:
        """A member gave up waiting for the others (timeout): it leaves the forming group."""
        inst_id = self.member_of.pop((name, key), None)
        inst = self.instances.get(inst_id) if inst_id is not None else None
        if inst is not None and not inst.complete():
            self._drop_member(inst, key)

    def created(self, instance_id: int, rank: int) -> None:
        """A member's communicator exists; when all exist the ranks are free for other groups."""
        inst = self.instances.get(instance_id)
        if inst is None:
            return
        inst.created.add(rank)
        if len(inst.created) == inst.world_size:
            self._release(inst)

    def leave(self, instance_id: int, rank: int) -> None:
        """A member destroyed its group; the name is free once every member left."""
        inst = self.instances.get(instance_id)
        if inst is None:
            return
        inst.left.add(rank)
        self.member_of.pop((inst.name, inst.members.get(rank, (None, None))[1]), None)
        if len(inst.left) == inst.world_size:
            self._release(inst)
            del self.instances[instance_id]
            for key in [k for k in self.arrived if k[0] == instance_id]:
                del self.arrived[key]

    def arrive(self, instance_id: int, seq: int, rank: int) -> None:
        """A member waits unusually long in collective number ``seq``: it says it is there."""
        self.arrived.setdefault((instance_id, seq), set()).add(rank)
        for k in [k for k in self.arrived if k[0] == instance_id and k[1] < seq - 8]:
            del self.arrived[k]

    def arrivals(self, instance_id: int, seq: int) -> list[int]:
        """Group ranks that said they arrived at collective number ``seq``."""
        return sorted(self.arrived.get((instance_id, seq), ()))

    # -- members that died ----------------------------------------------------------------
    def member_gone(self, actor_id: int | None, mpi_rank: int | None, reason: str,
                    host: str = "", actors: dict[int, str] | None = None,
                    ended: bool = False) -> list[tuple]:
        """The head's hook: an actor ended (actor_id; ended: for good, not restarting) or a
        rank died (mpi_rank; actors: the actors that were on it, by id, with their class
        names); host: where it was.

        Every group it was a member of breaks: a formed one returns a notice ``(mpi rank,
        (instance id, message))`` for each member's rank still alive (the killed actor's own
        rank too, which wakes a call of its own); a forming one fails its members' joins; a
        declared one fails the joins of its other members."""
        actors = dict(actors or {})
        gone = set(actors) | ({actor_id} if actor_id is not None else set())
        if ended and (any(k[1] == actor_id for k in self.member_of) or
                      any(actor_id in d["actors"] for d in self.declared.values())):
            self.ended.add(actor_id)
        for name, decl in self.declared.items():
            dead = {r: (None, a) for a, r in decl["actors"].items() if a in gone}
            if dead and not decl.get("gone"):
                decl["gone"] = _gone(name, dead, reason, host, actors)
        notices = []
        for inst in list(self.instances.values()):
            dead = {r: (m, k) for r, (m, k) in inst.members.items()
                    if k in gone or (mpi_rank is not None and m == mpi_rank)}
            if not dead or inst.gone:
                continue
            inst.gone = _gone(inst.name, dead, reason, host, actors)
            formed = inst.complete() and inst.granted_at is not None
            if formed:
                live = {m for m, _ in inst.members.values() if m != mpi_rank}
                notices += [(m, (inst.id, inst.gone)) for m in sorted(live)]
            else:  # its members wait in join: they fail there
                inst.error = inst.gone
                if self.forming.get(inst.name) is inst:
                    del self.forming[inst.name]
            self._release(inst)
            for r, (_, key) in dead.items():  # it never leaves: count it as left
                inst.left.add(r)
                if self.member_of.get((inst.name, key)) == inst.id:
                    del self.member_of[(inst.name, key)]
                if not formed:
                    self._drop_member(inst, key)
        return notices

    def _drop_member(self, inst: Instance, key: Any) -> None:
        """A member leaves a group that did not form (it gave up, or the group failed); the
        last one frees it."""
        self.member_of.pop((inst.name, key), None)
        for r, (_, k) in list(inst.members.items()):
            if k == key:
                del inst.members[r]
        if not inst.members:
            self.instances.pop(inst.id, None)
            if self.forming.get(inst.name) is inst:
                del self.forming[inst.name]

    # -- creation grants ------------------------------------------------------------------
    def _grant(self) -> None:
        """Grants queued groups in order; a group waits while an earlier one shares a rank."""
        blocked = set(self.holds)
        for inst in list(self.queue):
            ranks = set(inst.mpi_ranks())
            if ranks & blocked:
                blocked |= ranks
                continue
            self.queue.remove(inst)
            inst.granted_at = self.clock()
            for m in ranks:
                self.holds[m] = inst.id
            blocked |= ranks

    def _release(self, inst: Instance) -> None:
        for m, held_by in list(self.holds.items()):
            if held_by == inst.id:
                del self.holds[m]
        if inst in self.queue:
            self.queue.remove(inst)
        self._grant()

    def _expire_holds(self) -> None:
        """A member that died while creating must not block its ranks forever."""
        now = self.clock()
        stale = {i for i in self.holds.values()
                 if self.instances.get(i) is None
                 or now - self.instances[i].granted_at > self.hold_timeout}
        for inst_id in stale:
            for m in [m for m, i in self.holds.items() if i == inst_id]:
                del self.holds[m]
        if stale:
            self._grant()


def _gone(name: str, dead: dict, reason: str, host: str, actors: dict[int, str]) -> str:
    """What a group's survivors are told: which members ({group rank: (MPI rank | None, member
    key)}) are gone, and why."""
    parts = []
    for rank, (mpi_rank, key) in sorted(dead.items()):
        what = (f"actor {actors[key]}" if key in actors else
                "a task" if isinstance(key, tuple) else "an actor")
        where = "".join([f", MPI rank {mpi_rank}" if mpi_rank is not None else "",
                         f" on host {host}" if host else ""])
        parts.append(f"rank {rank} ({what}{where})")
    who = (f"member {parts[0]} is" if len(parts) == 1 else
           f"members {', '.join(parts[:-1])} and {parts[-1]} are")
    return f"group {name!r}: {who} gone: {reason}"


RENDEZVOUS = f"{__name__}:GroupRendezvous"  # the head service's name (see HeadRuntime.op_service)
