"""An executor process: runs a worker rank's tasks (or one actor) outside the rank.

It holds no MPI. Everything user code asks of hpcray (nested tasks, get, put, wait, named
actors) goes to its rank over a ``Channel`` and the rank answers; a crash here is the
death of one process, which the rank turns into a task failure or an actor restart.
Started from a forkserver made before MPI_Init (see ``executors.py``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import io
import os
import queue
import select
import signal
import socket
import sys
import threading
from typing import Any

from ... import exceptions as E
from ..transport.pipe import Channel, ChannelClosed, oob
from ..transport.shm import Segment
from . import context, py_modules
from . import protocol as P
from .backoff import Backoff
from .objects import DROP, LocalStore, RefTracker, Stored, ref_events
from .pending import PendingCalls
from .runner import ActorHost, Runner
from .runtime import Runtime, segment_pool
from .serialization import fits_inline, has_device

PR_SET_PDEATHSIG = 1
CANCEL_SIGNAL = signal.SIGRTMIN + 3  # no launcher or scheduler sends it


def detach() -> None:
    """What an executor does first: die with its parent, ignore the signals meant for the
    rank (Hydra signals the whole process group), and never initialise MPI."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    for sig in (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        import mpi4py

        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = False
    except ImportError:
        pass


class BlockIds:
    """Ids for what an executor creates: blocks of its rank's id space, fetched as needed."""

    def __init__(self, runtime: ExecutorRuntime):
        self.runtime = runtime
        self.lock = threading.Lock()
        self.base, self.left = 0, 0

    def next(self) -> int:
        with self.lock:
            if not self.left:
                self.base, self.left = self.runtime.rpc("ids")
            self.left -= 1
            self.base += 1
            return self.base - 1


class _Lines(io.TextIOBase):
    """sys.stdout/stderr of an executor: each complete line goes to the rank."""

    def __init__(self, runtime: ExecutorRuntime, is_err: bool):
        self.runtime, self.is_err = runtime, is_err
        self.partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        whole = self.partial + text
        cut = whole.rfind("\n") + 1
        self.partial = whole[cut:]
        if cut:
            self.runtime.send(("log", whole[:cut], self.is_err))
        return len(text)

    def flush(self) -> None:
        if self.partial:
            text, self.partial = self.partial, ""
            self.runtime.send(("log", text, self.is_err))


class ExecutorRuntime(Runner, Runtime):
    """The runtime of an executor process: a Runtime whose head is its rank."""

    def __init__(self, channel: Channel, info: dict):  # no Runtime.__init__: there is no MPI
        self.channel = channel
        self.lock = threading.RLock()
        self.config = info["config"]
        self.rank = info["rank"]
        self.ranks = info["ranks"]
        self.job_id = info["job_id"]
        self.job = info["job"]
        self.session = info["session"]
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.ids = BlockIds(self)
        self.waiting_threads: set[int] = set()
        self.store = LocalStore(segments=segment_pool(self.config))
        self.refs = RefTracker()
        self.backoff = Backoff(self.config.spin_time, self.config.backoff_max)
        self.functions: dict[int, Any] = {}
        self.fn_blobs: dict[int, bytes] = {}
        self.local = threading.local()
        self.stopping = False
        self.events: collections.deque = collections.deque(maxlen=self.config.timeline_events)
        self.running: dict[int, int] = {}
        self.cancelled: set[int] = set()
        self.replies: dict[int, list] = {}
        self.req_ids = iter(range(1, 1 << 62))
        self.done: list = []
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.reading = threading.Lock()          # held by the one thread reading the channel
        self.reader_wanted = threading.Event()   # the listener thread reads from now on
        self.signalled = False                   # a cancel signal came: read the channel
        self.actor: ActorHost | None = None
        self.before_user_code = lambda: None
        self.pending_calls = PendingCalls()

    @property
    def transport(self):
        raise E.HpcrayError(
            f"this code runs in an executor process of rank {self.rank} ({self.host}), which "
            "holds no MPI: collectives and mpi_comm() need the rank itself. Create the actor "
            "with .options(in_rank=True), or run the job with HPCRAY_EXECUTION=thread.")

    def exclusive_mpi(self):
        return self.transport

    # -- talking to the rank -----------------------------------------------------------------
    def send(self, msg: tuple | None) -> None:
        """Sends msg to the rank, after the reference changes made before it (None: only
        those)."""
        with self.lock:
            changes = self.refs.drain()
            if changes:
                for object_id, event in changes:
                    if event == DROP:  # no ref here any more: neither the value
                        self.store.objects.pop(object_id, None)
                self.channel.send(("refs", changes))
            if msg is not None:
                self.channel.send(msg)

    def rpc(self, op: str, *args) -> Any:
        """Asks the rank; returns its answer or raises the error it raised."""
        req_id = next(self.req_ids)
        slot = self.replies[req_id] = [threading.Event(), None, None]
        self.send(("rpc", req_id, op, args, getattr(self.local, "task_id", 0)))
        done = slot[0]
        local = self.local
        while not done.is_set():  # no thread reads the channel: this one does until answered
            local.reading = True
            if self.reading.acquire(blocking=False):
                try:
                    while not done.is_set():
                        self.dispatch(self.recv())
                finally:
                    self.stop_reading()
                    local.reading = False
                self.raise_if_cancelled()  # a cancel read meanwhile
            else:  # (another thread reads: it answers us, or gives up reading soon)
                local.reading = False
                done.wait(0.005)
        del self.replies[req_id]
        if not slot[1]:
            raise slot[2]
        return slot[2]

    def to_head(self, msg: tuple) -> None:
        if msg[0] == P.SUBMIT:
            msg = (P.SUBMIT, msg[1].wire())
        if msg[0] in {P.DONE, P.DONE_MANY}:
            events, self.events = list(self.events), collections.deque(
                maxlen=self.config.timeline_events)
            self.send(("done", msg, events))
        else:
            self.send(("up", msg))

    def request(self, op: str, *args) -> Any:
        return self.rpc("request", op, args)

    def _store_put(self, header: bytes, buffers: list, contained: list, borrowed: bool = False):
        from ...object_ref import ObjectRef

        object_id = self.ids.next()
        ref = ObjectRef(object_id, _created=True)
        if fits_inline(header, buffers, self.config.inline_max):
            buffers = [bytes(b) for b in buffers]
            with self.lock:
                self.store.objects[object_id] = Stored(header, buffers)
        else:
            buffers = self.wire(object_id, buffers)
        self.send(("put", object_id, header, buffers, contained))
        return ref

    def fetch(self, missing: list[int], deadline: float | None, need: int,
              until_error: bool) -> bool:
        """The rank waits for them (lending the task's CPU) and sends them."""
        complete, found = self.rpc("fetch", missing, deadline, need, until_error)
        self.keep_found(found)
        return complete

    def await_local(self, ids: list[int], deadline: float | None, need: int,
                    until_error: bool = False) -> bool:
        """A task's arguments not sent with it: the rank sends them once they are there."""
        complete, found = self.rpc("args", ids)
        self.keep_found(found)
        return complete

    def keep_found(self, found: list) -> None:
        with self.lock:
            for object_id, header, buffers, error in found:
                self.store.add(object_id, unwire(header, buffers, error))

    def cancel_running(self, task_id: int) -> None:
        """Interrupts the task: on the main thread by a signal, which also ends a wait in C
        (time.sleep, a blocking read), as Ray's KeyboardInterrupt does."""
        ident = self.running.get(task_id)
        if ident is not None and ident == threading.main_thread().ident and \
                ident not in self.waiting_threads:
            self.cancelled.add(task_id)
            signal.pthread_kill(ident, CANCEL_SIGNAL)
        else:
            super().cancel_running(task_id)

    def actor_hosts(self) -> list[ActorHost]:
        return [self.actor] if self.actor is not None else []

    @contextlib.contextmanager
    def task_env(self, spec: P.TaskSpec):
        """runtime_env: environment variables and a working directory for the task (for an
        actor: its whole life, the process being its own)."""
        env = spec.options.get("runtime_env") if spec.kind != P.ACTOR_CALL else None
        if not env:
            yield
            return
        saved_env, saved_cwd, saved_path = dict(os.environ), os.getcwd(), list(sys.path)
        os.environ.update(env.get("env_vars") or {})
        if env.get("working_dir"):
            os.chdir(env["working_dir"])
            if env["working_dir"] not in sys.path:  # (an actor's creation enters twice)
                sys.path.insert(0, env["working_dir"])
        undo_modules = py_modules.apply(env.get("py_modules") or [])
        try:
            yield
        finally:
            if spec.kind == P.NORMAL:
                os.environ.clear()
                os.environ.update(saved_env)
                os.chdir(saved_cwd)
                sys.path[:] = saved_path
                undo_modules()

    def on_cancel_signal(self, signum: int, frame: Any) -> None:
        """The rank cancels a task: it sent the cancel, and this signal so that it is read
        while the task runs and nobody reads the channel."""
        self.signalled = True
        local = self.local
        was_reading = getattr(local, "reading", False)
        local.reading = True
        try:
            if self.reading.acquire(blocking=False):
                self.stop_reading()
        finally:
            local.reading = was_reading
        if not was_reading:  # (raised inside a read, it would cut a message in two)
            self.raise_if_cancelled()

    def raise_if_cancelled(self) -> None:
        task_id = getattr(self.local, "task_id", 0)
        if task_id and task_id in self.cancelled and task_id in self.running and \
                threading.get_ident() not in self.waiting_threads:
            raise E.TaskCancelledError(f"task {task_id:x} was cancelled")

    def resolve_args(self, spec: P.TaskSpec, inline: dict) -> tuple[list, dict]:
        try:
            return super().resolve_args(spec, inline)
        finally:  # arguments fetched for the call are not kept (unless a ref here holds one)
            with self.lock:
                for _, object_id in spec.deps:
                    if object_id not in inline and object_id not in self.refs.counts:
                        self.store.objects.pop(object_id, None)

    def want(self, object_id: int) -> None:
        self.listener_reads()  # nobody waits in the channel for the object: the listener will
        self.send(("watch", object_id))  # the rank sends it once it is there

    def listener_reads(self) -> None:
        """From now on the listener thread reads the channel, for good (an actor's executor,
        or one whose code awaits objects): messages then arrive while user code runs."""
        self.reader_wanted.set()

    # -- messages from the rank --------------------------------------------------------------
    def listen(self) -> None:
        """The listener thread, once wanted (see listener_reads): reads every message."""
        self.reader_wanted.wait()
        with self.reading:
            while True:
                self.dispatch(self.recv())

    def dispatch(self, msg: tuple) -> None:
        """A message from the rank, on whichever thread reads the channel: the main thread
        between tasks, a thread waiting for its answer, the cancel signal's handler, or the
        listener. The end of the channel ends the executor."""
        try:
            kind = msg[0]
            if kind == "task":
                self.on_task(*msg[1:])
            elif kind == "reply":
                slot = self.replies.get(msg[1])
                if slot is not None:
                    slot[1], slot[2] = msg[2], msg[3]
                    slot[0].set()
            elif kind == "obj":
                _, object_id, header, buffers, error = msg
                with self.lock:
                    self.store.add(object_id, unwire(header, buffers, error))
                self.run_fired()
            elif kind == "cancel":
                self.cancel_running(msg[1])
            elif kind == "kill":
                if self.actor is not None:
                    self.actor.kill()
                os._exit(0)
        except ChannelClosed:
            os._exit(0)

    def next_task(self) -> tuple:
        """The next task: the main thread reads the channel itself while none is queued
        (no hand-over between threads per task), unless the listener reads."""
        tasks = self.tasks
        while True:
            if not tasks.empty() or self.reader_wanted.is_set():
                return tasks.get()
            self.local.reading = True
            try:
                if self.reading.acquire(timeout=0.005):
                    try:
                        if tasks.empty() and not self.reader_wanted.is_set():
                            msg = self.recv()
                            self.dispatch(msg)
                            del msg  # a task's arguments (their node-store mappings) go with it
                    finally:
                        self.stop_reading()
            finally:
                self.local.reading = False

    def stop_reading(self) -> None:
        """Releases the channel, after reading what arrived with a cancel signal that came
        while this thread held it (the rank sends the message, then the signal). The caller
        marks its thread as reading (``local.reading``) from before it takes the channel until
        after: the cancel signal's handler raises only where the main thread is not reading."""
        while True:
            if self.signalled:
                self.signalled = False
                sock = self.channel.sock
                while self.channel.buffered() or select.select([sock], [], [], 0)[0]:
                    self.dispatch(self.recv())
            self.reading.release()
            # (set before the handler tries the lock: whichever of us gets it reads)
            if not self.signalled or not self.reading.acquire(blocking=False):
                return

    def recv(self) -> tuple:
        """The next message; a closed or broken channel (the rank is gone) ends the executor."""
        try:
            return self.channel.recv()
        except ChannelClosed:
            os._exit(0)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc(file=sys.__stderr__)
            os._exit(0)

    def on_task(self, fields: tuple, inline: dict) -> None:
        spec = P.TaskSpec(*fields)
        for object_id, (header, buffers, error) in inline.items():
            if isinstance(buffers, Segment):  # the mapping lives as long as the views
                inline[object_id] = (header, buffers.views(), error)
        if spec.fn_blob is not None:
            self.fn_blobs[spec.fn_id] = spec.fn_blob
        if spec.kind == P.NORMAL:
            self.tasks.put((spec, inline))
        elif spec.kind == P.ACTOR_CREATE:
            self.listener_reads()
            self.actor = ActorHost(self, spec, inline)
        elif self.actor is not None:
            self.actor.submit(spec, inline)

    def report(self, task_id: int, results: list, retryable: bool, more: bool = False) -> None:
        # batching needs someone to flush a batch: here only the serial actor loop does (its
        # last call of a burst has more=False); threaded actors report each call at once
        actor = self.actor
        batch = more and actor is not None and actor.concurrency <= 1 and actor.loop is None
        super().report(task_id, results, retryable, batch)

    def keep_result(self, object_id: int, header: bytes, buffers: list, copy: bool) -> tuple:
        """A large result goes to the rank's store with the report (the rank keeps it)."""
        return (header, self.wire(object_id, buffers, copy), False)

    def wire(self, object_id: int, buffers: list, copy: bool = False):
        """Large buffers as they go to the rank: a node-store segment, or bytes."""
        if has_device(buffers):
            raise TypeError(
                "device arrays made in an executor process cannot leave it: give the task or "
                "actor num_gpus, or .options(in_rank=True), so that it runs in its rank")
        segment, kept = self.keep(object_id, buffers) if copy or self.config.node_store \
            else (None, buffers)
        return segment if segment is not None else oob(kept)

    def serve(self) -> None:
        """The main thread: runs the rank's tasks one at a time; retires after a function's
        max_calls calls (Ray's max_calls: the process is replaced)."""
        calls: dict[int, int] = {}
        while True:
            spec, inline = self.next_task()
            limit = spec.options.get("max_calls") or 0
            calls[spec.fn_id] = calls.get(spec.fn_id, 0) + 1
            retire = bool(limit) and calls[spec.fn_id] >= limit
            if retire:
                self.send(("retire",))  # before the result: the rank gives it no more tasks
            self.execute(spec, inline, None)
            if retire:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                self.send(None)
                os._exit(0)
            del spec, inline
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            if ref_events:
                self.send(None)  # the refs the task dropped


def unwire(header: bytes, buffers, error: bool) -> Stored:
    """A value as the rank sent it: its buffers in a node-store segment or in the message."""
    if isinstance(buffers, Segment):
        return Stored(header, buffers.views(), error, segment=buffers)
    return Stored(header, buffers, error)


def main(sock: socket.socket) -> None:
    """The executor process's entry point (a forkserver child)."""
    detach()
    channel = Channel(sock)
    info = channel.recv()
    os.environ.clear()
    os.environ.update(info["env"])
    if info["cwd"]:
        try:
            os.chdir(info["cwd"])
        except OSError:
            pass
    sys.path[:] = info["sys_path"]
    runtime = ExecutorRuntime(channel, info)
    context.set_current(runtime)
    if runtime.config.log_to_driver:
        sys.stdout, sys.stderr = _Lines(runtime, False), _Lines(runtime, True)
    signal.signal(CANCEL_SIGNAL, runtime.on_cancel_signal)
    threading.Thread(target=runtime.listen, daemon=True, name="hpcray-executor-listen").start()
    runtime.serve()

