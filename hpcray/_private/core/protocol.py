"""The messages ranks exchange, and the task description they carry.

Worker -> head and head -> worker halves mirror each other; peer messages move
object data directly between the two ranks involved, never through the head.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# Op codes: the first item of every message. A message travels as a plain tuple
# (op, *fields) -- pickled several times faster than a record; the records below name its
# fields and types, and tests/test_protocol.py holds every sender and handler to them.
# worker -> head
SUBMIT = 1
DONE = 2
REFS = 3
WANT = 4
REQUEST = 5
PUT = 6
LOG = 7
BLOCKED = 8
HEARTBEAT = 9
DONE_MANY = 10
EVENTS = 11
RETURNED = 12
# head -> worker
TASK = 20
PUSH = 21
OBJ = 22
FREE = 23
CANCEL = 24
KILL_ACTOR = 25
REPLY = 26
SHUTDOWN = 27
TIMELINE = 28
UNQUEUE = 29
NOTICE = 30
# peer -> peer
OBJDATA = 40
RELEASE = 41

HEAD, WORKER, PEER = "head", "worker", "peer"  # who receives a message kind


class Submit(NamedTuple):
    """Run this task, actor creation or actor call."""

    OP = SUBMIT
    TO = HEAD
    spec: tuple                  # TaskSpec.wire()


class Done(NamedTuple):
    """A task finished; results: [(id, inline blob | None, size, contained ids, error)]."""

    OP = DONE
    TO = HEAD
    task_id: int
    results: list
    retryable: bool              # a system failure: the head may retry the task


class DoneMany(NamedTuple):
    """Several Done reports batched: [(task_id, results, retryable), ...]."""

    OP = DONE_MANY
    TO = HEAD
    reports: list


class Refs(NamedTuple):
    """Reference count changes: [(object id, +1 | -1), ...]."""

    OP = REFS
    TO = HEAD
    changes: list


class Want(NamedTuple):
    """Deliver these objects to me when they are ready."""

    OP = WANT
    TO = HEAD
    ids: list


class Request(NamedTuple):
    """Run head operation ``op`` (get_actor, kill, cancel, nodes, ...); answered by Reply."""

    OP = REQUEST
    TO = HEAD
    req_id: int
    op: str
    args: tuple


class Put(NamedTuple):
    """I stored a new object (inline: its blob when small)."""

    OP = PUT
    TO = HEAD
    object_id: int
    inline: tuple | None
    size: int
    contained: list              # ids nested inside it, pinned while it lives


class Log(NamedTuple):
    """Output of the rank's tasks, for the driver's stdout or stderr."""

    OP = LOG
    TO = HEAD
    text: str
    is_err: bool
    pid: int = 0                 # the executor process that printed it (0: the rank)


class Blocked(NamedTuple):
    """A task waits in a nested get (it lends its resources) or stopped waiting."""

    OP = BLOCKED
    TO = HEAD
    task_id: int
    blocked: bool


class Heartbeat(NamedTuple):
    """I am alive; quiet: seconds (inf: until the next heartbeat) I may then stay silent."""

    OP = HEARTBEAT
    TO = HEAD
    quiet: float = 0.0


class Returned(NamedTuple):
    """Answer to Unqueue: task_id had not started here and was dropped."""

    OP = RETURNED
    TO = HEAD
    task_id: int


class Events(NamedTuple):
    """Answer to Timeline: the task events this rank recorded."""

    OP = EVENTS
    TO = HEAD
    req_id: int
    events: list


class Task(NamedTuple):
    """Run this; inline: {object id: (header, buffers, error)} of its small arguments."""

    OP = TASK
    TO = WORKER
    fields: tuple                # TaskSpec.wire()
    inline: dict
    behind: int = 0              # a task running here: start this one when that ends or blocks


class Unqueue(NamedTuple):
    """Give back task_id if it still waits behind another (it may run sooner elsewhere)."""

    OP = UNQUEUE
    TO = WORKER
    task_id: int


class Notice(NamedTuple):
    """News for a library above core on this rank (see hooks.on_notice), e.g. that a member
    of a collective group died; ignored where nothing registered ``path``."""

    OP = NOTICE
    TO = WORKER
    path: str                    # the head service that sends it ("module:Class")
    payload: Any


class Push(NamedTuple):
    """Send your copy of object_id to rank dest."""

    OP = PUSH
    TO = WORKER
    object_id: int
    dest: int


class Obj(NamedTuple):
    """A small value (or an error) you asked for."""

    OP = OBJ
    TO = WORKER
    object_id: int
    header: bytes
    buffers: list
    error: bool


class Free(NamedTuple):
    """Drop your copies of these objects: no reference is left."""

    OP = FREE
    TO = WORKER
    ids: list


class Cancel(NamedTuple):
    """Cancel this running task (force: also a task stuck outside Python)."""

    OP = CANCEL
    TO = WORKER
    task_id: int
    force: bool


class KillActor(NamedTuple):
    """End this actor now."""

    OP = KILL_ACTOR
    TO = WORKER
    actor_id: int


class Reply(NamedTuple):
    """The answer to a Request: a value, or the exception it raised (ok False)."""

    OP = REPLY
    TO = WORKER
    req_id: int
    ok: bool
    value: Any


class Shutdown(NamedTuple):
    """Stop: the job is over."""

    OP = SHUTDOWN
    TO = WORKER


class Timeline(NamedTuple):
    """Send me your recorded task events (answered by Events)."""

    OP = TIMELINE
    TO = WORKER
    req_id: int


class ObjData(NamedTuple):
    """An object's pickle and buffer descriptions; the buffers follow on the DATA tag.

    descs: a host buffer's size, or a device buffer's transfer (device/transfer.py)."""

    OP = OBJDATA
    TO = PEER
    object_id: int
    header: bytes
    descs: list
    error: bool


class Release(NamedTuple):
    """I am done reading your CUDA IPC exports with these tokens."""

    OP = RELEASE
    TO = PEER
    tokens: list


MESSAGES: tuple[type, ...] = (Submit, Done, DoneMany, Refs, Want, Request, Put, Log, Blocked,
                              Heartbeat, Events, Returned, Task, Unqueue, Notice, Push, Obj, Free,
                              Cancel, KillActor, Reply, Shutdown, Timeline, ObjData, Release)

# task kinds
NORMAL, ACTOR_CREATE, ACTOR_CALL = 0, 1, 2


SESSION_SHIFT, RANK_SHIFT = 56, 40


class Ids:
    """Unique ids: the session in the highest bits (unique per init() in a process), the
    creating rank below it, a counter in the low bits. A ref kept from an earlier session can
    therefore never name an object or actor of a later one."""

    def __init__(self, rank: int, session: int = 0):
        self.session = session
        self._counter = itertools.count((session << SESSION_SHIFT) + (rank << RANK_SHIFT) + 1)

    def next(self) -> int:
        return next(self._counter)


def session_of(any_id: int) -> int:
    return any_id >> SESSION_SHIFT


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
        return _fields_of(self)


_FIELDS = tuple(TaskSpec.__dataclass_fields__)
_fields_of = operator.attrgetter(*_FIELDS)
