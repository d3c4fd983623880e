"""A worker rank: receives tasks and actor calls from the head and runs them.

The main thread is the progress loop (all receiving); tasks run in a pool of
threads and each actor in its own thread(s) or asyncio loop, so a task blocked
in a nested ``get`` never stops the rank from serving others.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ... import exceptions as E
from . import hooks
from . import protocol as P
from .objects import Stored
from .procs import process_gone
from .runner import ActorHost, Runner, ThreadPool, _Forward
from .runtime import Runtime
from .serialization import nbytes, serialize

if TYPE_CHECKING:
    from .executors import ExecutorPool


class WorkerRuntime(Runner, Runtime):
    """Ranks 1..N-1."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.executor = ThreadPool()
        self.pool: ExecutorPool | None = None  # executor processes (HPCRAY_EXECUTION=process)
        if self.config.execution == "process":
            from .executors import ExecutorPool

            self.pool = ExecutorPool(self)
            # the rank's threads (progress loop, executor hub, pool) run only runtime code:
            # hand the GIL over within 100 us, not Python's default 5 ms
            sys.setswitchinterval(1e-4)
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
            P.TIMELINE: self.on_timeline, P.UNQUEUE: self.on_unqueue, P.NOTICE: self.on_notice,
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
        self.live: set[int] = set()          # normal tasks running here, not blocked
        self.behind: dict[int, tuple] = {}   # running task id -> (spec, inline) to start next

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
        if msg[0] == P.BLOCKED and msg[2]:
            self.start_next(msg[1])

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

    def progress_once(self) -> bool:
        busy = super().progress_once()
        return self.pool.poll() or busy if self.pool is not None else busy

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
    def on_task(self, src: int, fields: tuple, inline: dict, behind: int = 0) -> None:
        spec = P.TaskSpec(*fields)
        if spec.fn_blob is not None:
            self.fn_blobs[spec.fn_id] = spec.fn_blob
        if spec.kind == P.NORMAL:
            with self.lock:
                if behind in self.live:
                    self.behind[behind] = (spec, inline)
                    return
                self.live.add(spec.task_id)
        self.start(spec, inline)

    def start(self, spec: P.TaskSpec, inline: dict) -> None:
        pool = self.pool
        if pool is not None and (spec.actor_id not in self.actors if spec.kind == P.ACTOR_CALL
                                 else not self.in_rank(spec)):
            if spec.kind == P.NORMAL:
                pool.run_task(spec, inline)
            elif spec.kind == P.ACTOR_CREATE:
                pool.create_actor(spec, inline)
            else:
                pool.actor_call(spec, inline)
        elif spec.kind == P.NORMAL:
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

    def actor_hosts(self) -> list[ActorHost]:
        return list(self.actors.values())

    @staticmethod
    def in_rank(spec: P.TaskSpec) -> bool:
        """Whether a task or actor runs in the rank itself: asked for (code that uses MPI or
        device arrays), or it holds GPUs (device memory moves by CUDA IPC and NCCL from the
        rank)."""
        return bool(spec.resources.get("GPU") or spec.options.get("in_rank"))

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
        queued = self.unqueue(task_id)
        if queued is not None:
            self.report(task_id, self.error_results(queued, E.TaskCancelledError(
                f"{queued.name} was cancelled before it started")), False)
        elif self.pool is None or not self.pool.cancel(task_id, force):
            self.cancel_running(task_id)

    def on_unqueue(self, src: int, task_id: int) -> None:
        if self.unqueue(task_id) is not None:
            self.to_head((P.RETURNED, task_id))

    def unqueue(self, task_id: int) -> P.TaskSpec | None:
        """Drops a task still waiting behind another here; its spec, or None."""
        with self.lock:  # (one task waits behind each running one at most: a short scan)
            for leader, (spec, _) in self.behind.items():
                if spec.task_id == task_id:
                    del self.behind[leader]
                    return spec
        return None

    def start_next(self, task_id: int) -> None:
        """task_id ended or blocked: the task queued behind it starts now."""
        with self.lock:
            self.live.discard(task_id)
            follower = self.behind.pop(task_id, None)
            if follower is None:
                return
            self.live.add(follower[0].task_id)
            self.flush_done()  # the head learns that task_id ended before anything of the next
        self.start(*follower)

    def report(self, task_id: int, results: list, retryable: bool, more: bool = False) -> None:
        super().report(task_id, results, retryable, more)
        if self.live or self.behind:
            self.start_next(task_id)

    def on_kill_actor(self, src: int, actor_id: int) -> None:
        host = self.actors.pop(actor_id, None)
        if host is not None:
            host.kill()
        elif self.pool is not None:
            self.pool.kill_actor(actor_id)

    def on_reply(self, src: int, req_id: int, ok: bool, value: Any) -> None:
        slot = self.replies.get(req_id)
        if slot is not None:
            slot[1], slot[2] = ok, value
            slot[0].set()

    def on_timeline(self, src: int, req_id: int) -> None:
        self.transport.send(0, (P.EVENTS, req_id, list(self.events)))

    def on_notice(self, src: int, path: str, payload: Any) -> None:
        handler = hooks.notice_handlers.get(path)
        if handler is not None:
            try:
                handler(payload)
            except Exception as exc:  # noqa: BLE001 - a library's bug must not stop the rank
                print(f"hpcray: rank {self.rank}: notice from {path} failed: {exc!r}",
                      file=sys.__stderr__, flush=True)

    def on_shutdown(self, src: int) -> None:
        self.stopping = "shutdown"

    # -- running code ----------------------------------------------------------------------

    # -- for the executor processes ----------------------------------------------------------
    def store_put_as(self, object_id: int, stored: Stored, contained: list) -> None:
        """An executor's put: the object is this rank's, under the executor's id."""
        self.announce_put(object_id, stored, nbytes(stored.header, stored.buffers), contained)

    def write_output(self, text: str, is_err: bool, pid: int) -> None:
        """What an executor printed: to the driver, named by the executor's pid."""
        self.to_head((P.LOG, text, is_err, pid))

    def actor_lost(self, actor_id: int, why: str) -> None:
        """An actor's executor died: the head restarts the actor or ends it."""
        self.executor.submit(self.request, "actor_lost", actor_id, why)

    def close(self) -> None:
        """Ends the executor processes (the rank is leaving)."""
        if self.pool is not None:
            self.pool.close()
