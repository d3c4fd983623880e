"""Reduce operations and errors of hpcray.collective (Ray's names, plus AVG)."""

from __future__ import annotations

from enum import IntEnum

from ..exceptions import HpcrayError


class ReduceOp(IntEnum):
    """How allreduce, reduce and reducescatter combine the members' values."""

    SUM = 0
    PRODUCT = 1
    MIN = 2
    MAX = 3
    AVG = 4


class CollectiveError(HpcrayError):
    """Bad use of a collective group: mismatched arguments across ranks, unknown group, ..."""


class CollectiveTimeoutError(CollectiveError, TimeoutError):
    """Members did not arrive at a collective (or at the group's creation) in time."""


class CollectiveGroupError(CollectiveError):
    """A member of the group died or was killed (its rank died, hpcray.kill(), a restart):
    the group cannot complete any operation again. Every surviving member's operation in
    progress and every later one raises this; the message names the member and why it went.
    Call destroy_collective_group(name) in the survivors and form the group again with live
    actors."""
