"""What every rank's runtime does for the code running on it: submit, put, get, wait.

The head (rank 0) and the workers share this client half; they differ only in
how a message reaches the head: a direct call on rank 0, an MPI send elsewhere.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ...exceptions import (
    DeserializationError,
    GetTimeoutError,
    HpcrayError,
    ObjectLostError,
    TaskError,
)
from ...object_ref import ObjectRef
from ..transport.shm import Segment, SegmentPool
from . import hooks
from . import protocol as P
from .anywhere import wait_anywhere
from .backoff import Backoff
from .config import Config
from .objects import LocalStore, RefTracker, Stored
from .pending import PendingCalls
from .serialization import fits_inline, has_device, nbytes, own, serialize

SHM = "shm"  # an ObjData whose buffers are in the sender's node store: descs = [SHM, where]

if TYPE_CHECKING:
    from ..transport.mpi import Transport


def _unpicklable(args, kwargs) -> str:
    """Names the first argument that cannot be serialized."""
    for label, value in [(f"argument {i}", a) for i, a in enumerate(args or ())] + [
            (f"keyword argument {k!r}", v) for k, v in (kwargs or {}).items()]:
        try:
            serialize(value)
        except Exception:  # noqa: BLE001 - any failure names the culprit
            return f"{label} ({type(value).__name__})"
    return "an argument"


class RankInfo:
    """What the head knows about one rank."""

    __slots__ = ("alive", "cuda_mpi", "gpus", "host", "last_seen", "node_id", "node_name", "pid",
                 "rank", "resources", "slurm", "slurm_node")

    def __init__(self, rank: int, host: str, pid: int, node_id: str, node_name: str,
                 resources: dict, gpus: list | None = None, cuda_mpi: bool = False,
                 slurm: dict | None = None, slurm_node: dict | None = None):
        self.rank, self.host, self.pid = rank, host, pid
        self.node_id, self.node_name, self.resources = node_id, node_name, resources
        self.gpus = gpus or []        # this rank's GPUs (gpu.Gpu), its own device first
        self.cuda_mpi = cuda_mpi      # the MPI library takes device pointers
        self.slurm = slurm            # what Slurm says about this rank's task (slurm.rank_info)
        self.slurm_node = slurm_node  # the node-level part of it
        self.alive = True
        self.last_seen = time.monotonic()

    def gpu_identity(self) -> str:
        """This rank's own GPU, unique in the job: its UUID, or node/index; "" without one."""
        own = self.gpus[0] if self.gpus else None
        return (own.uuid or f"{self.node_id}/{own.id}") if own else ""


def segment_pool(config) -> SegmentPool | None:
    """The pool of freed node-store segments this process reuses (None: the store is off)."""
    if not config.node_store:
        return None
    capacity = config.segment_cache
    if capacity < 0:
        capacity = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    return SegmentPool(capacity)


class Runtime:
    """State and client operations shared by the head and the workers."""

    def __init__(self, transport: Transport, config: Config, ranks: list[RankInfo], job_id: str,
                 session: int = 0):
        self.transport = transport
        self.lock = transport.lock
        self.config = config
        self.rank = transport.rank
        self.ranks = ranks
        self.job_id = job_id
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.ids = P.Ids(self.rank, session)
        self.waiting_threads: set[int] = set()  # threads inside await_local
        self.session = session
        self.store = LocalStore(segments=segment_pool(config))
        self.refs = RefTracker()
        self.backoff = Backoff(config.spin_time, config.backoff_max)
        self.functions: dict[int, Any] = {}
        self.local = threading.local()  # current task / actor of the calling thread
        self.stopping = False
        self.devices = hooks.devices.transfers(transport, ranks, config)
        # (name, kind, start, end, thread, ok) of the tasks run here, for hpcray.timeline()
        self.events: collections.deque = collections.deque(maxlen=config.timeline_events)
        self.job: dict = {"job_id": job_id, "slurm": None, "state_dir": ""}  # set by bootstrap
        self.pending_calls = PendingCalls()  # actor calls of max_pending_calls handles

    # -- progress (shared by both roles) ---------------------------------------------------
    def progress_once(self) -> bool:
        """Handles what has arrived and completes finished sends; True if anything happened."""
        transport = self.transport
        with self.lock:
            self.before_poll()
            busy = False
            for _ in range(64):
                item = transport.poll()
                if item is None:
                    break
                busy = True
                src, msg = item
                try:
                    self.handlers[msg[0]](src, *msg[1:])
                except Exception:  # noqa: BLE001 - a bad message must not stop the rank
                    traceback.print_exc(file=sys.__stderr__)
            self.after_poll()
            if self.devices.released or self.devices.fencing:
                self.devices.flush()
            transport.test_sends()
            busy = busy or transport.pending_sends() > 0
        if self.store.fired:
            self.run_fired()
        return busy

    def run_fired(self) -> None:
        """Runs the callbacks of objects that arrived, never under the rank lock (a caller
        holding it leaves them to the next poll)."""
        if self.lock._is_owned():
            self.backoff.kick()
            return
        with self.lock:
            fired, self.store.fired = self.store.fired, []
        for callback in fired:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a callback must not stop the rank
                traceback.print_exc(file=sys.__stderr__)

    def when_local(self, object_id: int, callback: Callable[[], None]) -> None:
        """Calls ``callback()`` once the object is on this rank (at once if it is already).

        It runs on whichever runtime thread sees the object arrive, outside the rank lock,
        so it must be quick: hand the work to a loop or a future.
        """
        with self.lock:
            present = object_id in self.store.objects
            if not present:
                self.store.watch((object_id,), callback)
        if present:
            callback()
        else:
            self.want(object_id)

    def want(self, object_id: int) -> None:
        """Asks for an object to be brought here (when_local's request)."""
        self.to_head((P.WANT, [object_id]))
        self.backoff.kick()  # the progress loop watches closely for the reply

    def before_poll(self) -> None:
        """Sends or applies the reference count changes made since the last poll."""

    def after_poll(self) -> None:
        """Flushes what handling produced (batched FREEs, forwarded output)."""

    def may_poll(self) -> bool:
        """Whether the calling thread drives progress itself while it waits."""
        return False

    # -- moving objects rank to rank (shared by both roles) ---------------------------------
    def send_object(self, dest: int, object_id: int, stored: Stored) -> list:
        """Sends this rank's copy of an object to dest: host buffers as MPI buffers, device
        buffers by the path transfer.py picks. Returns the requests still reading memory."""
        transport = self.transport
        if stored.segment is not None and self.ranks[dest].node_id == self.ranks[self.rank].node_id:
            with transport.lock:  # the reader maps it: nothing to send but where it is
                if not transport.closed:
                    transport.send(dest, (P.OBJDATA, object_id, stored.header,
                                          [SHM, stored.segment.describe()], stored.error))
            return []
        with transport.lock:
            if transport.closed:
                return []
            try:
                descs = [self.devices.describe(dest, b) if hooks.is_device(b) else memoryview(b).nbytes
                         for b in stored.buffers]
            except Exception as exc:  # noqa: BLE001 - the receiver gets the error, not a hang
                header, _, _ = serialize(ObjectLostError(
                    f"rank {self.rank} on {self.host} could not send object {object_id:016x} "
                    f"to rank {dest}: {type(exc).__name__}: {exc}"))
                transport.send(dest, (P.OBJDATA, object_id, header, [], True))
                return []
            transport.send(dest, (P.OBJDATA, object_id, stored.header, descs, stored.error))
            reqs = []
            for buf, desc in zip(stored.buffers, descs):
                if type(desc) is int:
                    reqs.append(transport.isend_raw(dest, buf))
                else:
                    reqs.extend(self.devices.send(dest, buf, desc))
            return reqs

    def on_objdata(self, src: int, object_id: int, header: bytes, descs: list,
                   error: bool) -> None:
        buffers, failure, segment = [], None, None
        if descs and descs[0] == SHM:
            try:
                segment = Segment.open_peer(*descs[1])
                buffers = segment.views()
            except OSError as exc:
                header, buffers, _ = serialize(ObjectLostError(
                    f"rank {self.rank} on {self.host} could not map object {object_id:016x} "
                    f"from rank {src}'s node store ({exc}); run with HPCRAY_NODE_STORE=0 "
                    "where processes may not open each other's /proc/<pid>/fd"))
                error, segment = True, None
            self.store.add(object_id, Stored(header, buffers, error, segment=segment))
            return
        host_sizes = [d for d in descs if type(d) is int]
        if self.config.node_store and len(host_sizes) == len(descs) and \
                sum(host_sizes) > self.config.inline_max:
            # received into the node store
            segment = Segment.create(host_sizes, f"{object_id:x}", self.store.segments)
            views = segment.views()
            with self.transport.lock:
                for view in views:
                    self.transport.recv_raw(src, view)
            self.store.add(object_id, Stored(header, views, error, segment=segment))
            return
        with self.transport.lock:
            for desc in descs:
                if type(desc) is int:
                    buffers.append(self.transport.recv_new(src, desc))
                    continue
                try:
                    buffers.append(self.devices.receive(src, desc))
                except Exception as exc:  # noqa: BLE001 - stored as the object's error below
                    failure = failure or exc
        if failure is not None:
            header, buffers, _ = serialize(ObjectLostError(
                f"rank {self.rank} on {self.host} could not receive object {object_id:016x} "
                f"from rank {src} ({type(failure).__name__}: {failure}). Set "
                "HPCRAY_GPU_TRANSPORT=staged to move device arrays through host memory."))
            error = True
        self.store.add(object_id, Stored(header, buffers, error))

    def gpu_ids(self) -> list[str]:
        """GPU ids of the calling task or actor (the rank's GPUs when it asked for any)."""
        asked = self.rank == 0 or getattr(self.local, "num_gpus", 0)
        return [g.id for g in self.ranks[self.rank].gpus] if asked else []

    def on_release(self, src: int, tokens: list) -> None:
        self.devices.release(tokens)

    @contextlib.contextmanager
    def exclusive_mpi(self) -> Iterator[None]:
        """Holds this rank's MPI lock for MPI calls of the caller's own: the rank's hpcray
        traffic waits meanwhile, and the head hears that its heartbeats may pause."""
        self.to_head((P.HEARTBEAT, math.inf))
        try:
            with self.transport.lock:
                yield
        finally:
            self.to_head((P.HEARTBEAT,))

    # -- reaching the head (differs by role) ----------------------------------------------
    def to_head(self, msg: tuple) -> None:
        raise NotImplementedError

    def request(self, op: str, *args) -> Any:
        raise NotImplementedError

    # -- submission ------------------------------------------------------------------------
    def pack_args(self, args: tuple, kwargs: dict, name: str) -> tuple:
        """Splits arguments into (serialized, top-level ref deps, nested ref ids)."""
        deps = []
        if args:
            args = list(args)
            for i, a in enumerate(args):
                if type(a) is ObjectRef:
                    deps.append((i, a.id))
                    args[i] = None
        if kwargs:
            kwargs = dict(kwargs)
            for k, a in kwargs.items():
                if type(a) is ObjectRef:
                    deps.append((k, a.id))
                    kwargs[k] = None
        if not args and not kwargs:
            return None, deps, [], None
        try:
            header, buffers, contained = serialize((args, kwargs))
        except Exception as exc:
            culprit = _unpicklable(args, kwargs)
            raise TypeError(f"could not serialize {culprit} of {name}: {type(exc).__name__}: {exc}."
                            " Arguments must be picklable; create locks, sockets, open files and "
                            "the like inside the task instead.") from exc
        if fits_inline(header, buffers, self.config.inline_max):
            return (header, [bytes(b) for b in buffers]), deps, contained, None
        # large: ship as an object of its own, moved rank to rank without the head
        # the driver's host arrays are sent from its memory; device arrays are copied at once
        # (a CUDA IPC importer reads them later, when the caller may have changed them)
        ref = self._store_put(header, buffers, contained, borrowed=self.rank == 0 and not
                              has_device(buffers) and not self.config.node_store)
        deps.append(("*", ref.id))
        return None, deps, [], ref

    def submit(self, spec: P.TaskSpec, num_returns: int) -> list[ObjectRef]:
        """Sends a task to the head; returns refs to its results."""
        spec.caller = self.rank
        spec.return_ids = [self.ids.next() for _ in range(num_returns)]
        refs = [ObjectRef(i, _created=True) for i in spec.return_ids]
        self.to_head((P.SUBMIT, spec))
        return refs

    def settle_borrowed(self, ref: ObjectRef | None) -> None:
        """After submit: a large argument still referencing the caller's memory is sent or copied."""
        if ref is None:
            return
        stored = self.store.get(ref.id)
        if stored is None or stored.sending is None:  # not borrowed: a copy already
            return
        if stored.sending:
            self.transport.wait_requests(stored.sending)
        else:
            with self.lock:
                stored.buffers = own(stored.buffers)
        stored.sending = None

    # -- objects ---------------------------------------------------------------------------
    def _store_put(self, header: bytes, buffers: list, contained: list, borrowed: bool = False
                   ) -> ObjectRef:
        object_id = self.ids.next()
        size = nbytes(header, buffers)
        if fits_inline(header, buffers, self.config.inline_max):
            stored = Stored(header, [bytes(b) for b in buffers])
        elif borrowed:
            stored = Stored(header, buffers, sending=[])
        else:
            segment, buffers = self.keep(object_id, buffers)
            stored = Stored(header, buffers, segment=segment)
        ref = ObjectRef(object_id, _created=True)
        self.announce_put(object_id, stored, size, contained)
        return ref

    def announce_put(self, object_id: int, stored: Stored, size: int, contained: list) -> None:
        """Stores a new object here and tells the head (small ones travel with the news)."""
        small = stored.segment is None and stored.sending is None and fits_inline(
            stored.header, stored.buffers, self.config.inline_max)
        inline = (stored.header, [bytes(b) for b in stored.buffers], False) if small else None
        with self.lock:
            self.store.add(object_id, stored)
            self.to_head((P.PUT, object_id, inline, size, contained))

    def keep(self, object_id: int, buffers: list) -> tuple[Segment | None, list]:
        """A private copy of a large value's buffers: in the node store when it is on (and
        the value holds no device memory), else in this process."""
        if self.config.node_store and not has_device(buffers):
            segment = Segment.holding(buffers, f"{object_id:x}", self.store.segments)
            return segment, segment.views()
        return None, own(buffers)

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed: pass the ObjectRef itself")
        try:
            header, buffers, contained = serialize(value)
        except Exception as exc:
            raise TypeError(f"could not serialize the value given to put(): {type(exc).__name__}: "
                            f"{exc}") from exc
        return self._store_put(header, buffers, contained)

    def _wait_local(self, ids: list[int], deadline: float | None, count: int | None = None,
                    until_error: bool = False) -> bool:
        """Asks the head for ids and waits until ``count`` of them (default all) are local
        (or, with until_error, until one that arrives is an error)."""
        objects = self.store.objects
        missing = [i for i in dict.fromkeys(ids) if i not in objects]
        if not missing:
            return True
        need = len(missing) if count is None else count - (len(set(ids)) - len(missing))
        if need <= 0:
            return True
        return self.fetch(missing, deadline, need, until_error)

    def fetch(self, missing: list[int], deadline: float | None, need: int,
              until_error: bool) -> bool:
        """Asks the head for the missing ids and waits until ``need`` of them are local (the
        calling task lends its resources meanwhile)."""
        self.to_head((P.WANT, missing))
        task = getattr(self.local, "task_id", 0)
        if task:
            self.to_head((P.BLOCKED, task, True))
        try:
            return self.await_local(missing, deadline, need, until_error)
        finally:
            if task:
                self.to_head((P.BLOCKED, task, False))

    def await_local(self, ids: list[int], deadline: float | None, need: int,
                    until_error: bool = False) -> bool:
        """Waits until ``need`` of ids (absent when called) arrive locally, or with until_error
        one of them arrives as an error; False on deadline."""
        with self.lock:
            objects = self.store.objects
            absent = [i for i in ids if i not in objects]
            need -= len(ids) - len(absent)
            if need <= 0:
                return True
            waiter = self.store.watch(absent)
            ident = threading.get_ident()
            self.waiting_threads.add(ident)  # cancel() flags these instead of interrupting
        try:
            if self.may_poll():
                backoff = Backoff(self.config.spin_time, self.config.backoff_max)
                while waiter.arrived < need and not (until_error and waiter.failed):
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
                    self.check_cancelled()
                    if self.progress_once():
                        backoff.reset()
                    else:
                        backoff.sleep()
                return True
            cond = self.store.cond
            with cond:
                while waiter.arrived < need and not (until_error and waiter.failed):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self.check_cancelled()
                    self.backoff.kick()
                    cond.wait(0.05 if remaining is None else min(remaining, 0.05))
                return True
        finally:
            with self.lock:
                self.store.unwatch(absent, waiter)
                self.waiting_threads.discard(ident)

    def check_cancelled(self) -> None:
        """Raises TaskCancelledError in a task waiting for objects once cancel() reached it
        (the worker's; the driver has no task to cancel)."""

    def get(self, refs, timeout: float | None = None):
        """Values of refs (a ref or a list of refs); raises the task's error if it failed."""
        single = isinstance(refs, ObjectRef)
        if single:
            refs = [refs]
        elif not isinstance(refs, (list, tuple)):
            raise TypeError(f"get() expects an ObjectRef or a list of ObjectRefs, got "
                            f"{type(refs).__name__}")
        ids = []
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(f"get() expects ObjectRefs, got an element of type {type(r).__name__}")
            ids.append(r.id)
        objects = self.store.objects
        if not all(map(objects.__contains__, ids)):  # else: all here; errors raise in order below
            self.check_session(ids)  # (a stale id is never here)
            deadline = None if timeout is None else time.monotonic() + timeout
            # a failed task's error as soon as it is known, as Ray does
            self._raise_first_error(ids)
            complete = self._wait_local(ids, deadline, until_error=True)
            self._raise_first_error(ids)
            if not complete:
                missing = sum(1 for i in set(ids) if i not in objects)
                raise GetTimeoutError(f"get() timed out after {timeout} s: {missing} of "
                                      f"{len(set(ids))} objects not ready")
        values = [self.value_of(i) for i in ids]
        return values[0] if single else values

    def check_session(self, ids: list[int]) -> None:
        """Refs kept from before shutdown() name nothing now: say so (touching nothing)."""
        session = self.session
        for i in ids:
            if P.session_of(i) != session:
                raise ValueError(f"ObjectRef({i:x}) belongs to an earlier hpcray session (before "
                                 "shutdown()); its object is gone with that session. Make the "
                                 "object again in this session.")

    def _raise_first_error(self, ids: list[int]) -> None:
        """Raises the error of the first id (in the caller's order) that is a local error."""
        objects = self.store.objects
        for i in ids:
            stored = objects.get(i)
            if stored is not None and stored.error:
                self.value_of(i)

    def value_of(self, object_id: int):
        stored = self.store.objects[object_id]
        try:
            value = stored.value()
        except HpcrayError:
            raise
        except Exception as exc:
            raise DeserializationError(
                f"object {object_id:016x} could not be unpickled on rank {self.rank} "
                f"({self.host}): {type(exc).__name__}: {exc}. Values must unpickle on every "
                "rank that reads them: define their classes in a module every rank can import "
                "(not only inside a task), and keep __reduce__/__setstate__ working there."
            ) from exc
        if stored.error:
            if isinstance(value, TaskError):
                raise value.as_instanceof_cause()
            raise value
        return value

    def wait(self, refs: list, num_returns: int = 1, timeout: float | None = None,
             fetch_local: bool = True) -> tuple[list, list]:
        """Splits refs into (ready, not ready) once num_returns are ready or timeout passes."""
        if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
            raise TypeError("wait() expects a list of ObjectRefs")
        if any(not isinstance(r, ObjectRef) for r in refs):
            raise TypeError("wait() expects a list of ObjectRefs")
        if not refs:
            return [], []
        if len({r.id for r in refs}) != len(refs):
            raise ValueError("wait() got duplicate ObjectRefs")
        self.check_session([r.id for r in refs])
        if not 0 <= num_returns <= len(refs):
            raise ValueError(f"num_returns must be between 0 and {len(refs)}, got {num_returns}")
        deadline = None if timeout is None else time.monotonic() + timeout
        if fetch_local:
            self._wait_local([r.id for r in refs], deadline, num_returns)
            objects = self.store.objects
        else:
            objects = wait_anywhere(self, [r.id for r in refs], deadline, num_returns)
        ready, not_ready = [], []
        for r in refs:
            (ready if r.id in objects and len(ready) < num_returns else not_ready).append(r)
        return ready, not_ready

    # -- context ---------------------------------------------------------------------------
    def rank_info(self, rank: int) -> RankInfo:
        return self.ranks[rank]
