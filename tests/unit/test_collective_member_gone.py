"""A collective group member that dies: the rendezvous's bookkeeping (which groups break, who
is told, which joins fail, what is freed) in-process, and the head's notice reaching the
members' ranks over the loopback transport. Real jobs: tests/test_collective_death.py."""

from __future__ import annotations

import time

import pytest
from loopback_job import loopback_job

import hpcray
from hpcray._private.core import hooks
from hpcray._private.core import protocol as P
from hpcray.collective import CollectiveGroupError
from hpcray.collective.rendezvous import RENDEZVOUS, GroupRendezvous

KILLED = "it was killed with hpcray.kill()"


def formed(rdv: GroupRendezvous, name: str, members: list[tuple[int, object]]) -> int:
    """Forms and creates a group of members [(mpi rank, key)] in rank order; its instance."""
    n = len(members)
    for rank, (mpi, key) in enumerate(members):
        rdv.join(name, n, rank, "mpi", mpi, key)
    go = rdv.join(name, n, 0, "mpi", *members[0])
    assert go["state"] == "go"
    for rank in range(n):
        rdv.created(go["instance"], rank)
    return go["instance"]


def test_a_killed_actor_breaks_its_groups_and_every_member_rank_is_told() -> None:
    rdv = GroupRendezvous()
    inst = formed(rdv, "g", [(1, 101), (2, 102), (3, 103)])
    other = formed(rdv, "h", [(1, 201), (2, 202)])  # without the actor: untouched
    notices = rdv.member_gone(103, None, KILLED, "node7", {103: "Worker"})
    msg = ("group 'g': member rank 2 (actor Worker, MPI rank 3 on host node7) is gone: "
           f"{KILLED}")
    # its own rank too: a call of the killed actor itself wakes
    assert notices == [(1, (inst, msg)), (2, (inst, msg)), (3, (inst, msg))]
    assert rdv.instances[inst].gone == msg and rdv.instances[other].gone is None
    # its rank dying later says nothing more: the group is broken already
    assert rdv.member_gone(None, 3, "rank 3 died", "node7", {103: "Worker"}) == []
    for rank in (0, 1):  # the survivors destroy it: the instance and the name are free
        rdv.leave(inst, rank)
    assert inst not in rdv.instances and not any(k[0] == "g" for k in rdv.member_of)
    assert rdv.join("g", 2, 0, "mpi", 1, 101) == {"state": "waiting", "missing": [1]}


def test_a_dead_rank_breaks_the_groups_of_every_member_on_it() -> None:
    rdv = GroupRendezvous()
    a = formed(rdv, "a", [(1, 11), (2, ("thread", 5))])  # a task's group
    b = formed(rdv, "b", [(3, 31), (2, 21)])
    c = formed(rdv, "c", [(1, 12), (3, 32)])
    why = "rank 2 (pid 99 on n1) died (its process is gone)"
    notices = rdv.member_gone(None, 2, why, "n1", {21: "Learner"})
    assert notices == [
        (1, (a, f"group 'a': member rank 1 (a task, MPI rank 2 on host n1) is gone: {why}")),
        (3, (b, f"group 'b': member rank 1 (actor Learner, MPI rank 2 on host n1) is gone: {why}")),
    ]  # the dead rank is told nothing; group c had nobody there
    assert rdv.instances[c].gone is None


def test_members_sharing_the_dead_rank_are_named_together() -> None:
    rdv = GroupRendezvous()
    for rank, (mpi, key) in enumerate([(4, 1), (5, 2), (5, 3)]):  # "nccl" allows sharing
        rdv.join("n", 3, rank, "nccl", mpi, key)
    go = rdv.join("n", 3, 0, "nccl", 4, 1)
    for rank in range(3):
        rdv.created(go["instance"], rank)
    ((dest, (_, msg)),) = rdv.member_gone(None, 5, "rank 5 died", "", {2: "A", 3: "B"})
    assert dest == 4
    assert msg == ("group 'n': members rank 1 (actor A, MPI rank 5) and rank 2 (actor B, MPI "
                   "rank 5) are gone: rank 5 died")


def test_a_member_that_dies_before_the_group_formed_fails_the_others_joins() -> None:
    rdv = GroupRendezvous()
    rdv.join("f", 3, 0, "mpi", 1, 101)
    rdv.join("f", 3, 2, "mpi", 3, 103)
    # nobody is in the group yet: no notices
    assert rdv.member_gone(103, None, KILLED, "h", {103: "W"}, ended=True) == []
    with pytest.raises(CollectiveGroupError, match=r"member rank 2 \(actor W, MPI rank 3 on "
                                                   r"host h\) is gone: it was killed"):
        rdv.join("f", 3, 0, "mpi", 1, 101)
    assert rdv.instances == {} and rdv.member_of == {} and rdv.forming == {}
    # the killed actor's thread (in its rank, it outlives the kill) may poll on: refused
    with pytest.raises(CollectiveGroupError, match="this actor was ended"):
        rdv.join("f", 3, 2, "mpi", 3, 103)
    # the name forms anew with live members
    assert rdv.join("f", 3, 0, "mpi", 1, 101)["state"] == "waiting"
    assert rdv.join("f", 3, 1, "mpi", 2, 102)["state"] == "waiting"
    assert rdv.join("f", 3, 2, "mpi", 3, 104)["state"] == "go"


def test_a_restarted_actor_joins_again() -> None:
    rdv = GroupRendezvous()
    inst = formed(rdv, "r", [(1, 101), (2, 102)])
    why = "the actor's process died"
    assert len(rdv.member_gone(102, None, why, "h", {102: "W"})) == 2  # not ended: restarts
    for rank in (0, 1):
        rdv.leave(inst, rank)
    assert rdv.join("r", 2, 0, "mpi", 1, 101)["state"] == "waiting"
    assert rdv.join("r", 2, 1, "mpi", 3, 102)["state"] == "go"  # its new incarnation


def test_a_queued_group_whose_member_died_is_never_granted() -> None:
    rdv = GroupRendezvous()
    rdv.join("first", 2, 0, "mpi", 1, "x")
    first = rdv.join("first", 2, 1, "mpi", 2, "y")  # granted: it holds ranks 1 and 2
    rdv.join("second", 2, 0, "mpi", 2, "p")
    assert rdv.join("second", 2, 1, "mpi", 1, "q")["state"] == "queued"
    assert rdv.member_gone("q", None, KILLED) == []
    with pytest.raises(CollectiveGroupError, match="group 'second': member rank 1"):
        rdv.join("second", 2, 0, "mpi", 2, "p")
    assert rdv.queue == []
    rdv.created(first["instance"], 0)
    rdv.created(first["instance"], 1)
    assert rdv.holds == {}


def test_a_declared_member_killed_before_it_joined_fails_the_others() -> None:
    rdv = GroupRendezvous()
    rdv.declare("d", {101: 0, 102: 1, 103: 2}, 3, "mpi")
    assert rdv.join("d", 3, 0, "mpi", 1, 101)["state"] == "waiting"
    rdv.member_gone(103, None, KILLED, "h", {103: "W"})
    msg = f"group 'd': member rank 2 (actor W on host h) is gone: {KILLED}"
    for key, rank in [(101, 0), (102, 1)]:  # joined before, and not yet
        with pytest.raises(CollectiveGroupError) as info:
            rdv.join("d", 3, rank, "mpi", rank + 1, key)
        assert str(info.value) == msg
    assert rdv.instances == {} and rdv.member_of == {}
    rdv.destroy("d")  # the driver destroys it and declares it again with a live actor
    rdv.declare("d", {101: 0, 102: 1, 104: 2}, 3, "mpi")
    for key, rank in [(101, 0), (102, 1), (104, 2)]:
        state = rdv.join("d", 3, rank, "mpi", rank + 1, key)
    assert state["state"] == "go"


def test_nothing_to_tell_for_strangers() -> None:
    rdv = GroupRendezvous()
    formed(rdv, "g", [(1, 1), (2, 2)])
    assert rdv.member_gone(9, None, KILLED) == []
    assert rdv.member_gone(None, 7, "rank 7 died") == []


@hpcray.remote(num_cpus=1)
class Member:
    def ping(self) -> str:
        return "pong"


def test_the_head_tells_the_member_ranks_when_an_actor_is_killed() -> None:
    """hpcray.kill() of a group member: the head asks its services (here the real
    rendezvous) and sends their NOTICEs, which each member rank hands to what registered
    the service's path; a NOTICE for a path nobody registered is ignored."""
    got: list = []
    hooks.on_notice(RENDEZVOUS, got.append)  # (hpcray.collective registers its own)
    try:
        with loopback_job(workers=2) as head:
            members = [Member.remote(), Member.remote()]
            hpcray.get([m.ping.remote() for m in members], timeout=30)
            ranks = [head.actors[m._actor_id].rank for m in members]  # (one CPU per rank)
            assert sorted(ranks) == [1, 2]
            for rank, (m, mpi) in enumerate(zip(members, ranks)):
                head.request("service", RENDEZVOUS, "join", "g", 2, rank, "mpi", mpi,
                             m._actor_id)
            go = head.request("service", RENDEZVOUS, "join", "g", 2, 0, "mpi", ranks[0],
                              members[0]._actor_id)
            with head.lock:
                head.transport.send(1, (P.NOTICE, "hpcray.nowhere:Nobody", "ignored"))
            hpcray.kill(members[1])
            deadline = time.monotonic() + 30
            while len(got) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert hpcray.get(members[0].ping.remote(), timeout=30) == "pong"
    finally:
        hooks.notice_handlers.pop(RENDEZVOUS, None)
    msg = f"group 'g': member rank 1 (actor Member, MPI rank {ranks[1]} on host "
    assert [instance for instance, _ in got] == [go["instance"]] * 2, got
    assert all(text.startswith(msg) and text.endswith(KILLED) for _, text in got), got
