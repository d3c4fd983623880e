"""The messages ranks exchange, and the task description they carry.

Worker -> head and head -> worker halves mirror each other; peer messages move
object data directly between the two ranks involved, never through the head.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

# worker -> head
SUBMIT = 1        # (SUBMIT, TaskSpec.wire())
DONE = 2          # (DONE, task_id, results, retryable)    results: [(id, inline|None, size, contained, error)]
REFS = 3          # (REFS, [(id, +1|-1), ...])
DONE_MANY = 10    # (DONE_MANY, [(task_id, results, retryable), ...])
WANT = 4          # (WANT, [ids])                          deliver these objects to me when ready
REQUEST = 5       # (REQUEST, req_id, op, args)
PUT = 6           # (PUT, id, inline|None, size, contained)
LOG = 7           # (LOG, text)
BLOCKED = 8       # (BLOCKED, task_id, blocked: bool)       a task waits in a nested get
HEARTBEAT = 9     # (HEARTBEAT, [quiet seconds])
EVENTS = 11       # (EVENTS, req_id, [event, ...])        answer to TIMELINE
# head -> worker
TASK = 20         # (TASK, TaskSpec.wire(), inline_deps {id: (header, buffers, error)})
PUSH = 21         # (PUSH, id, dest)                       send your copy of id to dest
OBJ = 22          # (OBJ, id, header, buffers, error)      a small value you asked for
FREE = 23         # (FREE, [ids])
CANCEL = 24       # (CANCEL, task_id)
KILL_ACTOR = 25   # (KILL_ACTOR, actor_id)
REPLY = 26        # (REPLY, req_id, ok, value)
SHUTDOWN = 27     # (SHUTDOWN,)
TIMELINE = 28     # (TIMELINE, req_id)                     send me your recorded task events
# peer -> peer
OBJDATA = 40      # (OBJDATA, id, header, descs, error) then the buffers' data on the DATA tag
                  #   descs: a host buffer's size, or a device buffer's transfer (transfer.py)
RELEASE = 41      # (RELEASE, [tokens])                    done reading your CUDA IPC exports

# task kinds
NORMAL, ACTOR_CREATE, ACTOR_CALL = 0, 1, 2


class Ids:
    """Unique ids: the creating rank in the high bits, a counter in the low ones."""

    def __init__(self, rank: int):
        self._counter = itertools.count((rank << 40) + 1)

    def next(self) -> int:
        return next(self._counter)


def id_rank(any_id: int) -> int:
    return any_id >> 40


@dataclass(slots=True)
class TaskSpec:
    """What to run: a function, an actor creation, or an actor method call."""

    task_id: int
    kind: int
    name: str
    fn_id: int = 0                  # function or class id (cached per rank)
    fn_blob: bytes | None = None    # pickled function/class, sent once per rank
    args: tuple | None = None       # (header, buffers) of (args, kwargs), or None
    deps: list = field(default_factory=list)       # [(position, id)]: top-level ObjectRefs
    contained: list = field(default_factory=list)  # ids nested inside args (pinned while it runs)
    return_ids: list = field(default_factory=list)
    resources: dict = field(default_factory=dict)
    strategy: Any = "DEFAULT"
    max_retries: int = 0
    retry_exceptions: Any = False   # bool, or the exception types pickled by value (bytes)
    actor_id: int = 0
    method: str = ""
    options: dict = field(default_factory=dict)     # actor options (max_concurrency, name, ...)
    caller: int = 0                                 # rank that submitted it

    def wire(self) -> tuple:
        """The fields as a flat tuple: pickles several times faster than the dataclass."""
        return tuple(getattr(self, f) for f in _FIELDS)


_FIELDS = tuple(TaskSpec.__dataclass_fields__)
