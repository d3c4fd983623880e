"""The head's object directory and actor table, in-process: what they send, and when."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from hpcray import exceptions as E
from hpcray._private.core import protocol as P
from hpcray._private.core.actors import ActorTable
from hpcray._private.core.directory import LocalCopies, ObjectDirectory
from hpcray._private.core.serialization import deserialize, inline_blob


class Rank0(LocalCopies):
    def __init__(self):
        self.added, self.pushed, self.freed = {}, [], []

    def add(self, object_id, blob):
        self.added[object_id] = blob

    def push(self, object_id, dest):
        self.pushed.append((object_id, dest))

    def free(self, object_id):
        self.freed.append(object_id)


def directory(alive=lambda rank: True):
    sent: list[tuple[int, tuple]] = []
    dropped: list[int] = []
    d = ObjectDirectory(lambda rank, msg: sent.append((rank, msg)), Rank0(), alive,
                        dropped.append)
    return d, sent, dropped


def test_waiters_get_the_value_inline_or_pushed_by_a_holder() -> None:
    d, sent, _ = directory()
    d.add(1)
    d.add(2)
    d.want(3, [1, 2])
    assert sent == []  # not ready yet
    d.mark_ready(1, inline_blob("small"))
    rank, msg = sent.pop()
    assert rank == 3 and msg[0] == P.OBJ and deserialize(msg[2], msg[3]) == "small"
    d.mark_ready(2, None, location=5, size=10 << 20)
    assert sent.pop() == (5, (P.PUSH, 2, 3))
    d.want(3, [2])
    assert sent == []  # rank 3 already has (or is being sent) a copy
    d.want(0, [2])  # rank 3 counts as a holder once its copy is on the way
    assert d.local.pushed == [] and sent.pop() == (3, (P.PUSH, 2, 0))
    d.want(4, [99])
    rank, msg = sent.pop()
    assert rank == 4 and msg[4] and isinstance(deserialize(msg[2], msg[3]), E.ObjectFreedError)


def test_reference_counts_against_a_model() -> None:
    """Random pins, unpins and puts: an object is freed exactly when its count reaches zero,
    its holders get one batched FREE, dead ranks none, and contained objects are unpinned."""
    rng = random.Random(3)
    alive = {r: True for r in range(1, 6)}
    d, sent, dropped = directory(lambda r: alive[r])
    model: dict[int, int] = {}
    holders: dict[int, int] = {}
    for object_id in range(1, 200):
        rank = rng.randrange(1, 6)
        d.put(rank, object_id, None, 1 << 20, [])
        model[object_id], holders[object_id] = 1, rank
    for _ in range(2000):
        object_id = rng.choice(list(model))
        if rng.random() < 0.5:
            d.pin([object_id])
            model[object_id] += 1
        else:
            d.unpin([object_id])
            model[object_id] -= 1
            if model[object_id] == 0:
                del model[object_id]
        assert set(d.entries) == set(model)
    alive[2] = False
    d.flush()
    freed = {(rank, i) for rank, msg in sent for i in msg[1]}
    assert all(msg[0] == P.FREE for _, msg in sent)
    expected = {(holders[i], i) for i in holders if i not in model and holders[i] != 2}
    assert freed == expected
    assert not dropped
    d.put(1, 500, None, 1, [])
    d.add(501)
    d.mark_ready(501, None, location=3, contained=[500])
    d.unpin([500])
    assert 500 in d.entries  # held by 501
    d.unpin([501])
    assert 500 not in d.entries and 501 not in d.entries


def test_a_lost_rank_fails_objects_only_it_held() -> None:
    d, _, _ = directory()
    d.put(2, 1, None, 100, [])
    d.put(2, 2, None, 100, [])
    d.entries[2].locations.add(3)
    d.add(3)
    task = SimpleNamespace(name="t")
    d.entries[1].dependents.append(task)
    blob, dependents = d.rank_lost(2, E.ObjectLostError("gone"))
    assert blob[2] and dependents == [task]
    assert d.entries[1].inline == blob and d.entries[2].locations == {3}


def create_task(actor_id: int, name: str | None = None, detached: bool = False):
    options = {"name": name} if name else {}
    if detached:
        options["lifetime"] = "detached"
    return SimpleNamespace(spec=SimpleNamespace(actor_id=actor_id, options=options))


def call(task_id: int, waiting: int = 0):
    return SimpleNamespace(spec=SimpleNamespace(task_id=task_id), waiting=waiting)


def test_actor_calls_go_in_order_once_placed_and_ready() -> None:
    sent = []
    table = ActorTable(lambda rank, msg: sent.append((rank, msg)))
    actor = table.add(create_task(7, "svc"))
    with pytest.raises(ValueError, match="already exists"):
        table.add(create_task(8, "svc"))
    calls = [call(1), call(2, waiting=1), call(3)]
    actor.queue.extend(calls)
    assert table.next_calls(actor, lambda t: True) == []  # not placed yet
    actor.rank = 4
    assert table.next_calls(actor, lambda t: True) == [calls[0]]  # 2 waits for an argument
    calls[1].waiting = 0
    assert table.next_calls(actor, lambda t: t is not calls[2]) == [calls[1]]  # 3 was dropped
    assert actor.inflight == {1, 2}
    assert table.by_name("svc") is actor
    inflight, queued = table.end(actor, "killed", notify=True)
    assert inflight == {1, 2} and queued == [] and sent == [(4, (P.KILL_ACTOR, 7))]
    with pytest.raises(ValueError, match="no live actor"):
        table.by_name("svc")
    table.add(create_task(9, "svc"))  # the name is free again


def test_orphaned_actors_end_after_their_last_call_unless_detached() -> None:
    table = ActorTable(lambda rank, msg: None)
    busy = table.add(create_task(1))
    busy.inflight.add(5)
    assert table.orphan(1) is None and busy.orphaned
    busy.inflight.clear()
    assert table.should_end(busy)
    table.add(create_task(2, detached=True))
    assert table.orphan(2) is None
    idle = table.add(create_task(3))
    assert table.orphan(3) is idle
