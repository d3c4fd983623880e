"""Running user code: the shared half of a worker rank (thread mode) and an executor process.

A task runs on some thread through ``Runner.execute``, which resolves its arguments,
calls it, packs its results or its error and reports them; each actor runs in an
``ActorHost``: its own thread(s), or an asyncio loop for async actors.
"""

from __future__ import annotations

import contextlib
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
from .serialization import deserialize, fits_inline, has_device, nbytes, serialize

_warned: set[int] = set()  # functions whose max_calls was reported as without effect


class ThreadPool:
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

    def __init__(self, worker: Runner, spec: P.TaskSpec, inline: dict):
        self.worker = worker
        self.actor_id = spec.actor_id
        self.instance: Any = None
        self.dead = False
        self.concurrency = int(spec.options.get("max_concurrency") or 0)
        # Ray's concurrency groups: "" is the default group, of max_concurrency; a call runs
        # in its group's threads (or, in an async actor, its group's own loop and thread)
        self.groups: dict[str, int] = {"": self.concurrency,
                                       **(spec.options.get("concurrency_groups") or {})}
        self.queues = {name: queue.SimpleQueue() for name in self.groups}
        self.calls: queue.SimpleQueue = self.queues[""]
        self.loop = None  # the default group's asyncio loop when the class has async methods
        self.loops: dict[str, tuple] = {}  # group -> (its loop, its semaphore)
        try:
            with worker.task_env(spec):  # an actor's runtime_env holds for its whole life
                cls = worker.load_function(spec)
        except Exception:  # noqa: BLE001 - construct() raises it again as the creation's error
            cls = None
        if cls is not None and any(inspect.iscoroutinefunction(m)
                                   for _, m in inspect.getmembers(cls)):
            import asyncio

            self.loops = {name: (asyncio.new_event_loop(), asyncio.Semaphore(size or 1000))
                          for name, size in self.groups.items()}
            self.loop = self.loops[""][0]
        self.create_spec = spec
        self.running_async: dict = {}  # task id -> the asyncio task running that call
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
            for name, (loop, _) in self.loops.items():
                if name:
                    threading.Thread(target=self.run_loop, args=(loop,), daemon=True,
                                     name=f"hpcray-actor-{name}").start()
            self.run_loop(self.loop)
            return
        for name, size in self.groups.items():
            for i in range(max(size, 1)):
                if name or i:  # the default group's first serves on this thread
                    threading.Thread(target=self.serve, args=(name,), daemon=True,
                                     name="hpcray-actor").start()
        self.serve("")

    def run_loop(self, loop) -> None:
        """Runs one concurrency group's asyncio loop on the calling thread."""
        import asyncio

        worker = self.worker
        worker.local.actor_id = self.actor_id
        worker.local.num_gpus = self.create_spec.resources.get("GPU", 0)
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def construct(self, *args, **kwargs) -> None:
        self.instance = self.worker.load_function(self.create_spec)(*args, **kwargs)

    def submit(self, spec: P.TaskSpec, inline: dict) -> None:
        group = spec.options.get("concurrency_group") or ""
        if self.loop is not None:
            loop, semaphore = self.loops.get(group) or self.loops[""]
            loop.call_soon_threadsafe(self.start_async, spec, inline, loop, semaphore)
        else:
            (self.queues.get(group) or self.calls).put((spec, inline))

    def start_async(self, spec: P.TaskSpec, inline: dict, loop, semaphore) -> None:
        task = loop.create_task(self.run_async(spec, inline, semaphore))
        self.running_async[spec.task_id] = task
        task.add_done_callback(lambda _: self.running_async.pop(spec.task_id, None))

    def cancel(self, task_id: int) -> bool:
        """Cancels an async call's running coroutine (it raises TaskCancelledError); False if
        no such coroutine runs here (a call not started yet sees the cancelled flag)."""
        if self.loop is None or task_id not in self.running_async:
            return False

        def cancel() -> None:
            task = self.running_async.get(task_id)
            if task is not None:
                task.cancel()

        task = self.running_async.get(task_id)
        (task.get_loop() if task is not None else self.loop).call_soon_threadsafe(cancel)
        return True

    def serve(self, group: str) -> None:
        """One thread of a concurrency group: runs its calls in order."""
        worker = self.worker
        worker.local.actor_id = self.actor_id
        worker.local.num_gpus = self.create_spec.resources.get("GPU", 0)
        calls = self.queues[group]
        alone = self.groups[group] <= 1  # its reports may wait for the calls queued behind
        while not self.dead:
            item = calls.get()
            if item is None:
                return
            spec, inline = item
            worker.execute(spec, inline, functools.partial(self.method, spec.method),
                           copy=True, more=alone and not calls.empty())

    def method(self, name: str):
        """The bound method a call names; Ray's built-in ones included."""
        if name == "__ray_ready__":
            return _ready
        if name == "__ray_terminate__":
            return exit_actor
        return getattr(self.instance, name)

    async def run_async(self, spec: P.TaskSpec, inline: dict, semaphore) -> None:
        worker = self.worker
        async with semaphore:
            start = time.time()
            try:
                if spec.task_id in worker.cancelled:
                    raise E.TaskCancelledError(spec.name)
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
            for loop, _ in self.loops.values():
                loop.call_soon_threadsafe(loop.stop)
        else:
            for name, size in self.groups.items():
                for _ in range(max(size, 1)):
                    self.queues[name].put(None)


class _Forward(io.TextIOBase):
    """Replaces sys.stdout/stderr on workers: complete lines go to the driver."""

    def __init__(self, worker: Runner, is_err: bool):
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


class Runner:
    """Runs tasks and actor calls on the calling thread; mixed into a Runtime."""

    def cancel_running(self, task_id: int) -> None:
        """Interrupts the running task task_id (its Python code: at its next bytecode; an
        async actor call: its coroutine)."""
        self.cancelled.add(task_id)
        if any(host.cancel(task_id) for host in self.actor_hosts()):
            return
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

    def actor_hosts(self) -> list[ActorHost]:
        """The actors this process runs."""
        return []

    @contextlib.contextmanager
    def task_env(self, spec: P.TaskSpec):
        """The task's runtime_env around its call: here (in the rank, shared by every task)
        there is none to give, so such a task fails with an error that says why."""
        if spec.kind != P.ACTOR_CALL and spec.options.get("runtime_env"):
            raise ValueError(f"{spec.name} has a runtime_env, which needs a process of its own: "
                             "it runs in its rank (HPCRAY_EXECUTION=thread, in_rank=True, or "
                             "GPUs); run it in an executor process (HPCRAY_EXECUTION=process)")
        if spec.options.get("max_calls") and spec.fn_id not in _warned:
            _warned.add(spec.fn_id)
            print(f"hpcray: {spec.name}: max_calls has no effect on a task that runs in its rank "
                  "(no process of its own to replace)", file=sys.stderr, flush=True)
        yield

    def check_cancelled(self) -> None:
        task_id = getattr(self.local, "task_id", 0)
        if task_id and task_id in self.cancelled:
            raise E.TaskCancelledError(f"task {task_id:x} was cancelled while it waited")

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
                results.append((object_id, self.keep_result(object_id, header, buffers, copy),
                                size, contained, False))
        return results

    def keep_result(self, object_id: int, header: bytes, buffers: list, copy: bool) -> None:
        """Keeps a large result in this rank's store (None: it is not inline): in the node
        store, or (an actor's, which may change it later) a private copy."""
        segment = None
        if copy or self.config.node_store and not has_device(buffers):
            segment, buffers = self.keep(object_id, buffers)
        with self.lock:
            self.store.objects[object_id] = Stored(header, buffers, segment=segment)

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
        return self.error_results(spec, error, header, buffers), retryable

    def error_results(self, spec: P.TaskSpec, error: BaseException, header: bytes | None = None,
                      buffers: list | None = None) -> list:
        """The reports of a task whose results are all ``error``."""
        if header is None:
            header, buffers, _ = serialize(error)
        blob = (header, [bytes(b) for b in buffers], True)
        return [(object_id, blob, 0, [], True) for object_id in spec.return_ids]

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
            with self.task_env(spec):  # (its py_modules may be needed to unpickle the code)
                fn = self.load_function(spec) if target is None else target()
                args, kwargs = self.resolve_args(spec, inline)
                with self.lock:  # cancel() may interrupt only the user's code
                    self.running[task_id] = threading.get_ident()
                start = time.time()
                try:
                    if task_id in self.cancelled:  # cancelled while it was being set up
                        raise E.TaskCancelledError(spec.name)
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
        # the arguments go before the report: once the caller has the result, a large
        # argument's node-store segment is no longer mapped here and can take its next value
        # (not the result: refs in it must live until the head has pinned them)
        args = kwargs = None
        inline.clear()
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

