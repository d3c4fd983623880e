"""PendingCalls, the caller's side of max_pending_calls, in-process."""

from __future__ import annotations

import random

import pytest

from hpcray._private.core.pending import PendingCalls
from hpcray.exceptions import PendingCallsLimitExceeded, RayError


def test_counts_per_actor_and_asks_only_at_the_limit() -> None:
    rng = random.Random(7)
    pending, running, asked = PendingCalls(), set(), []

    def unfinished(ids):
        asked.append(list(ids))
        return [i for i in ids if i in running]

    next_id = 0
    for _ in range(500):
        if running and rng.random() < 0.4:
            running.discard(rng.choice(sorted(running)))  # a call finishes
            continue
        next_id += 1
        actor = rng.choice((1, 2))
        mine = [i for i in running if i % 2 == actor % 2]
        try:
            pending.admit(actor, 3, next_id * 2 + actor % 2, unfinished, "A.f.remote()")
        except PendingCallsLimitExceeded as exc:
            assert len(mine) >= 3 and "max_pending_calls=3" in str(exc)
            continue
        assert len(mine) < 3
        running.add(next_id * 2 + actor % 2)
    assert asked and all(len(ids) == 3 for ids in asked)  # only when a count was full


def test_forget_and_subclass() -> None:
    pending = PendingCalls()
    pending.admit(5, 1, 10, lambda ids: ids, "f")
    with pytest.raises(RayError):
        pending.admit(5, 1, 11, lambda ids: ids, "f")
    pending.forget(5, 10)
    pending.admit(5, 1, 12, lambda ids: ids, "f")
