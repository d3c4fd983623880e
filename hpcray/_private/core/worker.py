"""A worker rank: receives tasks and actor calls from the head and runs them.

The main thread is the progress loop (all receiving); tasks run in a pool of
threads and each actor in its own thread(s) or asyncio loop, so a task blocked
in a nested ``get`` never stops the rank from serving others.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import inspect
import io
import queue
import sys
import threading
import time
import traceback
from typing import Any

from ... import exceptions as E
from . import context
from . import protocol as P
from .objects import Stored
from .procs import process_gone
from .runtime import Runtime
from .serialization import deserialize, fits_inline, nbytes, own, serialize


class Executor:
    """Threads for normal tasks: reuses idle ones, starts another when all are busy."""

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.idle = 0
        self.lock = threading.Lock()

    def submit(self, fn, *args) -> None:
        with self.lock:
            start = self.idle == 0
            if not start:
                self.idle -= 1
        self.queue.put((fn, args))
        if start:
            threading.Thread(target=self.loop, daemon=True, name="hpcray-task").start()

    def loop(self) -> None:
        while True:
            fn, args = self.queue.get()
            fn(*args)
            with self.lock:
                self.idle += 1


class ActorExit(BaseException):
    """Unwinds an actor's method after exit_actor() (a BaseException: user code's
    ``except Exception`` does not stop it)."""


def exit_actor() -> None:
    """Ends the calling actor, as Ray's ``ray.actor.exit_actor()``: the head marks it dead
    (pending and later calls raise ActorDiedError saying it exited) and its rank drops it."""
    worker = context.current()
    actor_id = getattr(worker.local, "actor_id", 0) if worker is not None else 0
    if not actor_id:
        raise TypeError("exit_actor() ends the calling actor: call it inside an actor's method")
    with worker.lock:  # the results of the calls before this one reach the head first
        worker.flush_done()
    worker.request("kill", actor_id, "it called exit_actor()")
    raise ActorExit


def _ready() -> bool:
    return True


class ActorHost:
    """One actor on this rank: its instance and the calls it runs in order."""

    def __init__(self, worker: WorkerRuntime, spec: P.TaskSpec, inline: dict):
        self.worker = worker
        self.actor_id = spec.actor_id
        self.instance: Any = None
        self.dead = False
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.concurrency = int(spec.options.get("max_concurrency") or 0)
        self.loop = None  # an asyncio loop when the class has async methods
        try:
            cls = worker.load_function(spec)
        except Exception:  # noqa: BLE001 - construct() raises it again as the creation's error
            cls = None
        if cls is not None and any(inspect.iscoroutinefunction(m)
                                   for _, m in inspect.getmembers(cls)):
            import asyncio

            self.loop = asyncio.new_event_loop()
            self.semaphore = asyncio.Semaphore(self.concurrency or 1000)
        self.create_spec = spec
        threading.Thread(target=self.main, args=(spec, inline), daemon=True,
                         name=f"hpcray-actor-{spec.name}").start()

    def main(self, spec: P.TaskSpec, inline: dict) -> None:
        worker = self.worker
        worker.local.actor_id = self.actor_id
        worker.local.num_gpus = spec.resources.get("GPU", 0)
        if self.loop is not None:
            import asyncio

            asyncio.set_event_loop(self.loop)
        ok = worker.execute(spec, inline, lambda: self.construct)
        if not ok or self.dead:
            self.dead = True
            return
        if self.loop is not None:
            self.loop.run_forever()
            return
        for _ in range(max(self.concurrency, 1) - 1):
            threading.Thread(target=self.serve, daemon=True, name="hpcray-actor").start()
        self.serve()

    def construct(self, *args, **kwargs) -> None:
        self.instance = self.worker.load_function(self.create_spec)(*args, **kwargs)

    def submit(self, spec: P.TaskSpec, inline: dict) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.create_task, self.run_async(spec, inline))
        else:
            self.calls.put((spec, inline))

    def serve(self) -> None:
        worker = self.worker
        worker.local.actor_id = self.actor_id
        worker.local.num_gpus = self.create_spec.resources.get("GPU", 0)
        calls = self.calls
        while not self.dead:
            item = calls.get()
            if item is None:
                return
            spec, inline = item
            worker.execute(spec, inline, functools.partial(self.method, spec.method),
                           copy=True, more=not calls.empty())

    def method(self, name: str):
        """The bound method a call names; Ray's built-in ones included."""
        if name == "__ray_ready__":
            return _ready
        if name == "__ray_terminate__":
            return exit_actor
        return getattr(self.instance, name)

    async def run_async(self, spec: P.TaskSpec, inline: dict) -> None:
        worker = self.worker
        async with self.semaphore:
            start = time.time()
            try:
                method = self.method(spec.method)
                args, kwargs = worker.resolve_args(spec, inline)
                result = method(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                results, retryable = worker.pack_results(spec, result, copy=True), False
            except BaseException as exc:  # noqa: BLE001 - user code: the error is the result
                results, retryable = worker.pack_error(spec, exc)
            worker.events.append((spec.name, spec.kind, start, time.time(),
                                  threading.get_ident(), spec.task_id))
            if not self.dead:
                worker.report(spec.task_id, results, retryable)

    def kill(self) -> None:
        self.dead = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        else:
            for _ in range(max(self.concurrency, 1)):
                self.calls.put(None)


class _Forward(io.TextIOBase):
    """Replaces sys.stdout/stderr on workers: complete lines go to the driver."""

    def __init__(self, worker: WorkerRuntime, is_err: bool):
        self.worker = worker
        self.is_err = is_err
        self.parts: list[str] = []
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.parts.append(text)
        return len(text)

    def take(self, final: bool = False) -> str:
        with self.lock:
            if not self.parts:
                return ""
            text = "".join(self.parts)
            cut = len(text) if final else text.rfind("\n") + 1
            self.parts = [text[cut:]] if text[cut:] else []
            return text[:cut]


class WorkerRuntime(Runtime):
    """Ranks 1..N-1."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.executor = Executor()
        self.actors: dict[int, ActorHost] = {}
        self.running: dict[int, int] = {}   # task id -> thread ident
        self.cancelled: set[int] = set()
        self.replies: dict[int, list] = {}
        self.fn_blobs: dict[int, bytes] = {}
        self.head_pid = self.ranks[0].pid if self.ranks[0].host == self.host else 0
        self.handlers = {
            P.TASK: self.on_task, P.PUSH: self.on_push, P.OBJ: self.on_obj, P.FREE: self.on_free,
            P.CANCEL: self.on_cancel, P.KILL_ACTOR: self.on_kill_actor, P.REPLY: self.on_reply,
            P.SHUTDOWN: self.on_shutdown, P.OBJDATA: self.on_objdata, P.RELEASE: self.on_release,
            P.TIMELINE: self.on_timeline,
        }
        self.streams: list[_Forward] = []
        self.main_thread = threading.current_thread()
        self.main_busy = False   # the main thread is running a task
        self.busy_event = threading.Event()
        self.done: list = []  # batched task reports (see report())
        self.exit_fn = lambda: None  # set by bootstrap: ends the rank
        self.term_expired = lambda: False  # set by bootstrap: SIGTERM's grace has run out
        self.before_user_code = lambda: None  # set by bootstrap: preloaded imports are done
        self.inline_tasks: collections.deque = collections.deque()

    # -- the worker's half of the conversation ---------------------------------------------
    def to_head(self, msg: tuple) -> None:
        if msg[0] == P.SUBMIT:
            msg = (P.SUBMIT, msg[1].wire())
        with self.lock:
            self.flush_output()  # what a task printed arrives before its result
            changes = self.refs.drain()
            if changes:
                self.transport.send(0, (P.REFS, changes))
            self.transport.send(0, msg)
        self.backoff.kick()

    def request(self, op: str, *args) -> Any:
        req_id = self.ids.next()
        slot = self.replies[req_id] = [threading.Event(), None, None]
        self.to_head((P.REQUEST, req_id, op, args))
        while not slot[0].wait(0.05):
            if self.stopping:
                raise E.HpcrayError("the job is shutting down")
        del self.replies[req_id]
        if not slot[1]:
            raise slot[2]
        return slot[2]

    def forward_output(self) -> None:
        if self.config.log_to_driver:
            self.streams = [_Forward(self, False), _Forward(self, True)]
            sys.stdout, sys.stderr = self.streams

    def flush_output(self, final: bool = False) -> None:
        for stream in self.streams:
            text = stream.take(final)
            if text:
                self.transport.send(0, (P.LOG, text, stream.is_err))

    def before_poll(self) -> None:
        changes = self.refs.drain()
        if changes:
            self.transport.send(0, (P.REFS, changes))

    def after_poll(self) -> None:
        self.flush_output()
        self.flush_done()

    def may_poll(self) -> bool:
        return threading.current_thread() is self.main_thread

    def run(self) -> None:
        """The main thread: polls and runs tasks inline; returns on SHUTDOWN or a dead head.

        While it runs a task, the sentinel thread keeps messages flowing, and tasks that
        arrive meanwhile go to pool threads.
        """
        backoff = self.backoff
        threading.Thread(target=self.sentinel, daemon=True, name="hpcray-sentinel").start()
        while not self.stopping:
            busy = self.progress_once()
            while self.inline_tasks and not self.stopping:
                busy = True
                self.main_busy = True
                self.busy_event.set()
                spec, inline = self.inline_tasks.popleft()
                self.execute(spec, inline, None)
                self.main_busy = False
                self.busy_event.clear()
            if busy:
                backoff.reset()
            else:
                backoff.sleep()
        with self.lock:
            self.flush_output(final=True)
        deadline = time.monotonic() + 5
        while self.transport.pending_sends() and time.monotonic() < deadline:
            self.transport.test_sends()
            time.sleep(0.001)

    def sentinel(self) -> None:
        """Heartbeats, head liveness, and progress while the main thread runs a task.

        If the job ends while the main thread is stuck in a task, the sentinel ends the rank.
        """
        heartbeat = self.config.heartbeat_interval
        next_beat = next_check = 0.0
        stop_seen = 0.0
        while True:
            if self.stopping:
                stop_seen = stop_seen or time.monotonic()
                if self.main_busy and time.monotonic() - stop_seen > 0.5:
                    self.exit_fn()
                time.sleep(0.05)
                continue
            if self.main_busy:
                time.sleep(self.config.backoff_max)
                self.progress_once()
            else:
                self.busy_event.wait(heartbeat / 2)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + heartbeat
                self.transport.send(0, (P.HEARTBEAT,))
            if now >= next_check:
                next_check = now + 0.5
                if self.term_expired():
                    print(f"hpcray: rank {self.rank}: SIGTERM {self.config.preempt_grace:g} s ago "
                          "and the head has not ended the job; exiting", file=sys.__stderr__,
                          flush=True)
                    self.exit_fn(143)
                if self.head_pid and process_gone(self.head_pid):
                    print(f"hpcray: rank {self.rank}: the head (pid {self.head_pid}) is gone; "
                          "exiting", file=sys.__stderr__, flush=True)
                    self.stopping = "orphaned"
                    self.backoff.kick()

    # -- messages from the head ------------------------------------------------------------
    def on_task(self, src: int, fields: tuple, inline: dict) -> None:
        spec = P.TaskSpec(*fields)
        if spec.fn_blob is not None:
            self.fn_blobs[spec.fn_id] = spec.fn_blob
        if spec.kind == P.NORMAL:
            if not self.main_busy and not self.inline_tasks:
                self.inline_tasks.append((spec, inline))
            else:
                self.executor.submit(self.run_task, spec, inline)
        elif spec.kind == P.ACTOR_CREATE:
            self.actors[spec.actor_id] = ActorHost(self, spec, inline)
        else:
            host = self.actors.get(spec.actor_id)
            if host is not None:
                host.submit(spec, inline)

    def on_push(self, src: int, object_id: int, dest: int) -> None:
        stored = self.store.get(object_id)
        if stored is None:
            exc = E.ObjectLostError(f"rank {self.rank} was asked for object {object_id:016x}, "
                                    "which it no longer holds")
            header, buffers, _ = serialize(exc)
            stored = Stored(header, buffers, True)
        self.send_object(dest, object_id, stored)

    def on_obj(self, src: int, object_id: int, header: bytes, buffers: list, error: bool) -> None:
        self.store.add(object_id, Stored(header, buffers, error))

    def on_free(self, src: int, ids: list) -> None:
        self.store.free(ids, self.transport.pool)

    def on_cancel(self, src: int, task_id: int, force: bool) -> None:
        self.cancelled.add(task_id)
        ident = self.running.get(task_id)
        if ident is None:
            return
        if ident in self.waiting_threads:
            # inside the runtime (a nested get, maybe driving this rank's progress): an
            # exception raised there could be swallowed with a message; it checks the flag
            with self.store.cond:
                self.store.cond.notify_all()
            return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                   ctypes.py_object(E.TaskCancelledError))

    def check_cancelled(self) -> None:
        task_id = getattr(self.local, "task_id", 0)
        if task_id and task_id in self.cancelled:
            raise E.TaskCancelledError(f"task {task_id:x} was cancelled while it waited")

    def on_kill_actor(self, src: int, actor_id: int) -> None:
        host = self.actors.pop(actor_id, None)
        if host is not None:
            host.kill()

    def on_reply(self, src: int, req_id: int, ok: bool, value: Any) -> None:
        slot = self.replies.get(req_id)
        if slot is not None:
            slot[1], slot[2] = ok, value
            slot[0].set()

    def on_timeline(self, src: int, req_id: int) -> None:
        self.transport.send(0, (P.EVENTS, req_id, list(self.events)))

    def on_shutdown(self, src: int) -> None:
        self.stopping = "shutdown"

    # -- running code ----------------------------------------------------------------------
    def load_function(self, spec: P.TaskSpec):
        fn = self.functions.get(spec.fn_id)
        if fn is None:
            fn = self.functions[spec.fn_id] = deserialize(self.fn_blobs[spec.fn_id])
        return fn

    def resolve_args(self, spec: P.TaskSpec, inline: dict) -> tuple[list, dict]:
        values = {}
        missing = [i for _, i in spec.deps if i not in inline]
        if missing:
            self.await_local(missing, None, len(missing))
        for _, object_id in spec.deps:
            item = inline.get(object_id)
            stored = Stored(*item) if item is not None else self.store.objects[object_id]
            value = stored.value()
            if stored.error:
                raise value
            values[object_id] = value
        args, kwargs = [], {}
        if spec.args is not None:
            args, kwargs = deserialize(*spec.args)
        for position, object_id in spec.deps:
            if position == "*":
                args, kwargs = values[object_id]
        for position, object_id in spec.deps:
            if position == "*":
                continue
            if isinstance(position, int):
                args[position] = values[object_id]
            else:
                kwargs[position] = values[object_id]
        return args, kwargs

    def pack_results(self, spec: P.TaskSpec, result: Any, copy: bool = False) -> list:
        n = len(spec.return_ids)
        if n == 1:
            values = (result,)
        elif n == 0:
            values = ()
        else:
            if not isinstance(result, (tuple, list)) or len(result) != n:
                raise ValueError(f"{spec.name} has num_returns={n} but returned "
                                 f"{type(result).__name__} (need a tuple or list of {n} values)")
            values = result
        results = []
        for object_id, value in zip(spec.return_ids, values):
            try:
                header, buffers, contained = serialize(value)
            except Exception as exc:
                raise TypeError(f"could not serialize the return value of {spec.name}: "
                                f"{type(exc).__name__}: {exc}") from exc
            size = nbytes(header, buffers)
            if fits_inline(header, buffers, self.config.inline_max):
                results.append((object_id, (header, [bytes(b) for b in buffers], False), size,
                                contained, False))
            else:
                if copy:
                    buffers = own(buffers)
                with self.lock:
                    self.store.objects[object_id] = Stored(header, buffers)
                results.append((object_id, None, size, contained, False))
        return results

    def pack_error(self, spec: P.TaskSpec, exc: BaseException) -> tuple[list, bool]:
        if isinstance(exc, E.TaskCancelledError) or spec.task_id in self.cancelled:
            error: BaseException = E.TaskCancelledError(f"{spec.name} was cancelled")
            retryable = False
        elif isinstance(exc, SystemExit):
            # Ray: sys.exit()/exit() in a task ends its worker, a system failure (retried with
            # max_retries); here the rank lives on, and the task fails the same way
            error = E.WorkerCrashedError(f"{spec.name} called sys.exit({exc.code!r}) on rank "
                                         f"{self.rank} ({self.host}): its worker exited")
            retryable = True
        else:
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
                tb = tb.tb_next  # the user's frames only
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            # an error from a nested get keeps the original cause, so `except ValueError` works
            cause = exc.cause if isinstance(exc, E.TaskError) and exc.cause is not None else exc
            error = E.TaskError(spec.name, text, cause, self.rank, self.host, self.pid)
            retry = spec.retry_exceptions
            if isinstance(retry, bytes):
                retry = deserialize(retry)
            retryable = retry is True or (isinstance(retry, tuple) and isinstance(exc, retry))
        try:
            header, buffers, _ = serialize(error)
            deserialize(header, buffers)  # the driver must be able to rebuild it too
        except Exception:  # noqa: BLE001 - such an exception travels as its traceback only
            error = E.TaskError(spec.name, traceback.format_exc(), None, self.rank, self.host,
                                self.pid)
            header, buffers, _ = serialize(error)
        blob = (header, [bytes(b) for b in buffers], True)
        return [(object_id, blob, 0, [], True) for object_id in spec.return_ids], retryable

    def execute(self, spec: P.TaskSpec, inline: dict, target, copy: bool = False,
                more: bool = False) -> bool:
        """Runs one task or actor call on this thread and reports it; False if it raised.

        ``target`` returns the callable (an actor's method); None means the task's function.
        ``more``: other calls are queued behind this one, so its report may be batched.
        """
        self.before_user_code()
        local = self.local
        local.task_id = task_id = spec.task_id
        if spec.kind == P.NORMAL:
            local.num_gpus = spec.resources.get("GPU", 0)
        ok = True
        try:
            if task_id in self.cancelled:
                raise E.TaskCancelledError(spec.name)
            fn = self.load_function(spec) if target is None else target()
            args, kwargs = self.resolve_args(spec, inline)
            with self.lock:  # cancel() may interrupt only the user's code
                self.running[task_id] = threading.get_ident()
            start = time.time()
            try:
                result = fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.running.pop(task_id, None)
                self.events.append((spec.name, spec.kind, start, time.time(),
                                    threading.get_ident(), task_id))
            results, retryable = self.pack_results(spec, result, copy), False
        except BaseException as exc:  # noqa: BLE001 - user code: the error is the result
            with self.lock:
                self.running.pop(task_id, None)
            ok = False
            results, retryable = self.pack_error(spec, exc)
        local.task_id = 0
        self.cancelled.discard(task_id)
        self.report(task_id, results, retryable, more)
        return ok

    def report(self, task_id: int, results: list, retryable: bool, more: bool = False) -> None:
        """Sends a task's results, batching them while more calls are queued on the thread.

        A batch waits at most one poll of the progress loop (after_poll flushes it).
        """
        with self.lock:
            self.done.append((task_id, results, retryable))
            if not more or len(self.done) >= 64:
                self.flush_done()

    def flush_done(self) -> None:
        if self.done:
            done, self.done = self.done, []
            self.to_head((P.DONE_MANY, done) if len(done) > 1 else (P.DONE, *done[0]))

    def run_task(self, spec: P.TaskSpec, inline: dict) -> None:
        self.execute(spec, inline, None)
