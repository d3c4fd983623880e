"""A worker rank's executor processes: it supervises, they run user code.

Tasks run in a pool of reused executors (one more is started when all are busy), each
actor in an executor of its own. The rank's progress loop polls every executor's channel
and process sentinel (it sleeps in that select): it forwards what they send toward the
head, answers their requests (through pool threads when an answer has to wait), and turns
an executor's death into its task's failure (retried by the head: a system failure) or
its actor's death.

Executors are forked from a forkserver started before MPI_Init, with the MPI launcher's
variables removed, so they never hold MPI and fork no MPI or CUDA state.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from ... import exceptions as E
from ..transport.pipe import Channel, ChannelClosed, Waker, oob
from ..transport.shm import Segment
from . import protocol as P
from .executor import CANCEL_SIGNAL, unwire
from .objects import ADD, CREATED, DROP, Stored, ref_events
from .serialization import fits_inline, nbytes, serialize

if TYPE_CHECKING:
    from .worker import WorkerRuntime

MPI_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "PRTE_", "HYDRA_", "MPIR_", "I_MPI_", "MPICH_",
                "UCX_", "FI_", "OPAL_")
ID_BLOCK = 1 << 16
_BLOCK_BIT = 1 << (P.RANK_SHIFT - 1)  # executors' id blocks: the upper half of a rank's counter


def wire(stored: Stored):
    """A stored value's buffers as they go to an executor: its segment (mapped there, not
    copied), or the bytes."""
    return stored.segment if stored.segment is not None else oob(stored.buffers)


def clean_environ(env: dict | os._Environ) -> dict:
    """The environment without the MPI launcher's variables (an executor must not find them)."""
    return {k: v for k, v in env.items() if not k.startswith(MPI_PREFIXES)}


_context = None
_starting = threading.local()
_WAKE = object()


def _no_main_module(original):
    """multiprocessing re-imports the parent's ``__main__`` (the user's script) in every child
    it starts; an executor must not run the driver's script, and needs nothing from it."""
    def preparation_data(name):
        data = original(name)
        if getattr(_starting, "executor", False):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data
    return preparation_data


def start_forkserver(preload: list[str]) -> None:
    """Starts this process's forkserver (call before MPI_Init): it imports ``preload`` once,
    and every executor is then forked from it in milliseconds."""
    global _context
    if _context is not None:
        return
    from multiprocessing import spawn

    spawn.get_preparation_data = _no_main_module(spawn.get_preparation_data)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["hpcray._private.core.forkserver_init", *preload])
    saved = dict(os.environ)
    # the forkserver and multiprocessing's resource tracker it starts keep the dispositions
    # they start with: ignoring SIGUSR1 spares them Hydra's, sent to every surviving rank's
    # process group when one rank dies (it killed the tracker, and then executor starts failed)
    main = threading.current_thread() is threading.main_thread()
    usr1 = signal.signal(signal.SIGUSR1, signal.SIG_IGN) if main else None
    try:
        os.environ.clear()
        os.environ.update(clean_environ(saved))
        from multiprocessing import forkserver

        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if main:
            signal.signal(signal.SIGUSR1, usr1)
    _context = ctx


def describe_exit(code: int | None) -> str:
    if code is None:
        return "it is gone"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"it was killed by {name}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
    return f"it exited with status {code}"


def node_memory(limit: int = 0) -> tuple[int, int]:
    """(used, limit) bytes of this node's memory: the machine's, or its cgroup's when the job
    runs in one with a lower limit, or ``limit`` when given."""
    import psutil

    vm = psutil.virtual_memory()
    used, total = vm.total - vm.available, vm.total
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text != "max" and int(text) < total:
            with open("/sys/fs/cgroup/memory.current") as f:
                used, total = int(f.read()), int(text)
    except (OSError, ValueError):
        pass
    return used, limit or total


def _rss(pid: int) -> int | None:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


class Proc:
    """One executor process, as its rank sees it."""

    def __init__(self, process: Any, channel: Channel):
        self.process = process
        self.channel = channel
        self.pid = process.pid
        self.task: P.TaskSpec | None = None   # the task it runs (task executors)
        self.started = 0.0                     # when that task was sent
        self.why = ""                          # set when the rank ends the process itself
        self.actor_id = 0                      # its actor (actor executors)
        self.held: dict[int, int] = {}         # refs it holds, which its rank counts for it
        self.functions: set[int] = set()       # the code it has been sent
        self.dead = False
        self.retiring = False                  # it ends after its task (max_calls)


class ExecutorPool:
    """The executor processes of one worker rank."""

    def __init__(self, worker: WorkerRuntime):
        self.worker = worker
        self.idle: list[Proc] = []
        self.procs: dict[int, Proc] = {}         # by channel fd
        self.by_task: dict[int, Proc] = {}
        self.by_actor: dict[int, Proc] = {}
        self.early: dict[int, list] = {}         # calls to actors whose executor is starting
        self.calls: dict[int, Proc] = {}         # actor calls sent, until their results come
        self.lock = threading.RLock()
        self.blocks = iter(range(1, 1 << 22))
        self.waker = Waker()
        self.closed = False
        start_forkserver([m.strip() for m in worker.config.preload.split(",") if m.strip()])
        self.epoll = select.epoll()
        self.epoll.register(self.waker.fileno(), select.EPOLLIN)
        self.watched: dict[int, Any] = {self.waker.fileno(): _WAKE}  # fd -> (executor, died)
        self.added: list[Proc] = []              # started, not yet watched
        self.polling = threading.Lock()          # one thread reads the channels at a time
        worker.backoff.attach(self.poll, self.waker.wake)
        self.busy = threading.Event()  # some task runs: the memory monitor watches
        if worker.config.memory_usage_threshold > 0:
            threading.Thread(target=self.monitor, daemon=True, name="hpcray-memory").start()

    # -- starting ----------------------------------------------------------------------------
    def start(self) -> Proc:
        """A new executor process (a few ms from the forkserver)."""
        from . import executor

        ctx = _context
        mine, theirs = socket.socketpair()
        process = ctx.Process(target=executor.main, args=(theirs,), name="hpcray-executor")
        _starting.executor = True
        try:
            process.start()
        finally:
            _starting.executor = False
        theirs.close()
        worker = self.worker
        proc = Proc(process, Channel(mine))
        proc.channel.send({
            "config": worker.config, "rank": worker.rank, "ranks": worker.ranks,
            "job_id": worker.job_id, "job": worker.job, "session": worker.session,
            "env": clean_environ(os.environ), "cwd": os.getcwd(), "sys_path": list(sys.path)})
        with self.lock:
            self.procs[proc.channel.fileno()] = proc
            self.added.append(proc)
        self.waker.wake()
        return proc

    # -- tasks ---------------------------------------------------------------------------------
    def run_task(self, spec: P.TaskSpec, inline: dict) -> None:
        """Runs a normal task in an idle executor (a pool thread starts one if none is idle)."""
        with self.lock:
            proc = self.idle.pop() if self.idle else None
            if proc is not None:
                self.assign(proc, spec)
        if proc is not None:
            self.send_task(proc, spec, inline)
        else:
            self.worker.executor.submit(self.run_task_new, spec, inline)

    def assign(self, proc: Proc, spec: P.TaskSpec) -> None:
        proc.task = spec
        proc.started = time.monotonic()
        self.by_task[spec.task_id] = proc
        if not self.busy.is_set():
            self.busy.set()

    def monitor(self) -> None:
        """The memory monitor: while tasks run, ends the newest retriable one when the node
        nears its memory limit (as Ray's does), so the OOM killer does not pick a rank."""
        config = self.worker.config
        while not self.closed:
            self.busy.wait()
            time.sleep(0.25)
            with self.lock:
                running = [p for p in self.by_task.values() if p.task is not None and not p.dead]
                if not running:
                    self.busy.clear()
                    continue
            used, limit = node_memory(config.memory_limit)
            if used <= config.memory_usage_threshold * limit:
                continue
            retriable = [p for p in running if p.task.max_retries != 0] or running
            victim = max(retriable, key=lambda p: p.started)
            rss = _rss(victim.pid)
            if rss is None:  # gone already
                continue
            victim.why = (
                f"the memory monitor ended {victim.task.name} (its process used "
                f"{rss / 2**20:,.0f} MiB) on rank {self.worker.rank} ({self.worker.host}): the "
                f"node used {used / 2**30:.2f} GiB of {limit / 2**30:.2f} GiB, over "
                f"HPCRAY_MEMORY_USAGE_THRESHOLD={config.memory_usage_threshold:g}")
            print(f"hpcray: {victim.why}", file=sys.__stderr__, flush=True)
            victim.process.kill()
            time.sleep(0.5)  # let the memory come back before judging again

    def run_task_new(self, spec: P.TaskSpec, inline: dict) -> None:
        with self.lock:
            proc = self.idle.pop() if self.idle else None
        if proc is None:
            proc = self.start()
        with self.lock:
            self.assign(proc, spec)
        self.send_task(proc, spec, inline)

    def send_task(self, proc: Proc, spec: P.TaskSpec, inline: dict) -> None:
        """Sends a task with its small arguments; the executor asks for the others."""
        if spec.task_id in self.worker.cancelled:
            self.worker.cancelled.discard(spec.task_id)
            self.task_done(proc, spec.task_id)
            self.worker.report(spec.task_id, self.worker.error_results(
                spec, E.TaskCancelledError(f"{spec.name} was cancelled")), False)
            return
        blobs = {i: (h, oob(b), e) for i, (h, b, e) in inline.items()}
        objects = self.worker.store.objects
        room = self.worker.config.inline_max
        for _, object_id in spec.deps:
            stored = objects.get(object_id)
            if object_id not in blobs and stored is not None:
                size = nbytes(stored.header, stored.buffers)
                if stored.segment is not None or size <= room:  # a segment costs nothing
                    room -= 0 if stored.segment is not None else size
                    blobs[object_id] = (stored.header, wire(stored), stored.error)
        if spec.kind == P.ACTOR_CALL:
            with self.lock:
                self.calls[spec.task_id] = proc
        fields = spec.wire()
        if spec.kind != P.ACTOR_CALL and spec.fn_id not in proc.functions:
            proc.functions.add(spec.fn_id)  # each executor gets the code once
            fields = (*fields[:4], self.worker.fn_blobs.get(spec.fn_id), *fields[5:])
        try:
            proc.channel.send(("task", fields, blobs))
        except ChannelClosed:
            pass  # it died: the poll reports the task as crashed

    def task_done(self, proc: Proc, task_id: int) -> None:
        with self.lock:
            self.by_task.pop(task_id, None)
            if proc.task is not None and proc.task.task_id == task_id:
                proc.task = None
                if not proc.dead and not proc.actor_id and not proc.retiring:
                    self.idle.append(proc)

    def cancel(self, task_id: int, force: bool) -> bool:
        """Cancels a task running in an executor (force: ends the executor); False if none
        runs it."""
        with self.lock:  # a task's executor, or an actor call's (force: refused by the head)
            proc = self.by_task.get(task_id) or self.calls.get(task_id)
        if proc is None:
            return False
        self.worker.cancelled.add(task_id)
        if force:
            proc.process.kill()
        else:
            with contextlib.suppress(ChannelClosed):
                proc.channel.send(("cancel", task_id))
            if not proc.actor_id:  # its main thread runs the task: the signal has it read
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, CANCEL_SIGNAL)
        return True

    # -- the hub -------------------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> bool:
        """Handles what executors sent and their deaths, waiting up to ``timeout`` for
        something; True if anything came. The rank's progress loop polls here and sleeps
        here (its backoff), so an executor's result goes to the head without a hand-over
        between threads; while another thread reads the channels, a sleep waits on the
        rank's wake-up event instead."""
        if self.closed or not self.polling.acquire(blocking=False):
            return timeout > 0 and self.worker.backoff.wakeup.wait(timeout)
        try:
            return self._poll(timeout)
        finally:
            self.polling.release()

    def _poll(self, timeout: float) -> bool:
        watched = self.watched
        if self.added:
            with self.lock:
                added, self.added = self.added, []
            for proc in added:
                if not proc.dead:
                    for fd, died in ((proc.channel.fileno(), False), (proc.process.sentinel, True)):
                        watched[fd] = (proc, died)
                        self.epoll.register(fd, select.EPOLLIN)
        if 0 < timeout < 1e-3 and self.low_fds():
            # epoll counts whole milliseconds; select sleeps to the microsecond
            ready = select.select(list(watched), (), (), timeout)[0]
        else:
            ready = [fd for fd, _ in self.epoll.poll(timeout)]
        if not ready:
            return False
        for fd in ready:
            data = watched.get(fd)
            if data is None:
                continue
            if data is _WAKE:
                self.waker.drain()
                continue
            proc, died = data
            if proc.dead:
                continue
            if died:
                self.drain_then_bury(proc)
            else:
                self.receive(proc)
        return True

    def low_fds(self) -> bool:
        return max(self.watched) < 1024  # select()'s FD_SETSIZE

    def unwatch(self, proc: Proc) -> None:
        for fd in (proc.channel.fileno(), proc.process.sentinel):
            if self.watched.pop(fd, None) is not None:
                with contextlib.suppress(ValueError, OSError):
                    self.epoll.unregister(fd)

    def receive(self, proc: Proc) -> None:
        """Handles the messages that came (a read may bring several: epoll sees none of
        those left in the channel's read-ahead)."""
        channel = proc.channel
        while True:
            try:
                msg = channel.recv()
            except ChannelClosed:
                self.drain_then_bury(proc)
                return
            try:
                self.handle(proc, msg)
            except Exception:  # noqa: BLE001 - a bad message must not stop the rank
                traceback.print_exc(file=sys.__stderr__)
            if not channel.buffered() or proc.dead:
                return

    def drain_then_bury(self, proc: Proc) -> None:
        """The executor died: what it sent before counts, then its task or actor fails."""
        if proc.dead:
            return
        proc.dead = True
        sock = proc.channel.sock
        sock.setblocking(False)
        while True:
            if not proc.channel.buffered():
                try:
                    if not sock.recv(1, socket.MSG_PEEK):
                        break
                except (BlockingIOError, OSError):
                    break
            sock.setblocking(True)
            try:
                msg = proc.channel.recv()
            except ChannelClosed:
                break
            self.handle(proc, msg)
            sock.setblocking(False)
        proc.process.join(1)
        self.bury(proc, describe_exit(proc.process.exitcode))

    def bury(self, proc: Proc, why: str) -> None:
        worker = self.worker
        with self.lock:
            self.procs.pop(proc.channel.fileno(), None)
            if proc in self.idle:
                self.idle.remove(proc)
            task = proc.task
            proc.task = None
            if task is not None:
                self.by_task.pop(task.task_id, None)
            if proc.actor_id:
                self.by_actor.pop(proc.actor_id, None)
            for task_id in [t for t, p in self.calls.items() if p is proc]:
                del self.calls[task_id]
        self.unwatch(proc)
        proc.channel.close()
        for object_id, count in proc.held.items():  # its refs are gone with it
            for _ in range(count):
                ref_events.append((object_id, DROP))
        where = f"rank {worker.rank} ({worker.host})"
        if task is not None:
            if task.task_id in worker.cancelled:
                worker.cancelled.discard(task.task_id)
                error: BaseException = E.TaskCancelledError(
                    f"{task.name} was cancelled with force=True: its executor was ended")
                retryable = False
            elif proc.why:
                error, retryable = E.OutOfMemoryError(proc.why), True
            else:
                error = E.WorkerCrashedError(
                    f"the executor process (pid {proc.pid}) running {task.name} on {where} "
                    f"died: {why}")
                retryable = True
            worker.report(task.task_id, worker.error_results(task, error), retryable)
        if proc.actor_id and not self.closed:
            worker.actor_lost(proc.actor_id, f"its executor process (pid {proc.pid}) on "
                              f"{where} died: {why}")

    def handle(self, proc: Proc, msg: tuple) -> None:
        worker = self.worker
        kind = msg[0]
        if kind == "retire":
            proc.retiring = True
        elif kind == "refs":
            held = proc.held
            for object_id, event in msg[1]:
                held[object_id] = held.get(object_id, 0) + event
                if not held[object_id]:
                    del held[object_id]
                ref_events.append((object_id, ADD if event > 0 else DROP))
        elif kind == "done":
            _, report, events = msg
            worker.events.extend(events)
            reports = report[1] if report[0] == P.DONE_MANY else [report[1:]]
            for task_id, results, retryable in reports:
                self.calls.pop(task_id, None)
                self.keep_results(results)
                if proc.task is not None and proc.task.task_id == task_id:
                    self.task_done(proc, task_id)
                worker.report(task_id, results, retryable)
        elif kind == "up":
            up = msg[1]
            if up[0] == P.SUBMIT:
                spec = P.TaskSpec(*up[1])
                self.created(proc, spec.return_ids)
                if spec.fn_blob is not None:  # the head counts the code as this rank's
                    worker.fn_blobs[spec.fn_id] = spec.fn_blob
                worker.to_head((P.SUBMIT, spec))
            else:
                worker.to_head(up)
        elif kind == "put":
            _, object_id, header, buffers, contained = msg
            self.created(proc, [object_id])
            worker.store_put_as(object_id, unwire(header, buffers, False), contained)
        elif kind == "log":
            worker.write_output(msg[1], msg[2], proc.pid)
        elif kind == "rpc":
            _, req_id, op, args, task_id = msg
            if op == "ids":
                block = next(self.blocks)
                base = (worker.session << P.SESSION_SHIFT) + (worker.rank << P.RANK_SHIFT)
                self.reply(proc, req_id, True, (base + _BLOCK_BIT + block * ID_BLOCK, ID_BLOCK))
            else:
                worker.executor.submit(self.answer, proc, req_id, op, args, task_id)
        elif kind == "watch":
            object_id = msg[1]
            worker.when_local(object_id, lambda: self.deliver(proc, object_id))

    def created(self, proc: Proc, ids: list) -> None:
        """Refs an executor created (its submit/put): its rank holds them for it."""
        for object_id in ids:
            proc.held[object_id] = proc.held.get(object_id, 0) + 1
            ref_events.append((object_id, CREATED))

    def keep_results(self, results: list) -> None:
        """Large results stay in this rank's store; the head hears of them as usual."""
        worker = self.worker
        for i, (object_id, blob, size, contained, error) in enumerate(results):
            if blob is None or error:
                continue
            header, buffers, _ = blob
            if isinstance(buffers, Segment) or not fits_inline(header, buffers,
                                                               worker.config.inline_max):
                stored = unwire(header, buffers, False)
                with worker.lock:
                    worker.store.objects[object_id] = stored
                results[i] = (object_id, None, size, contained, error)

    def answer(self, proc: Proc, req_id: int, op: str, args: tuple, task_id: int) -> None:
        """A pool thread: answers a request that may wait (get, wait, head requests)."""
        worker = self.worker
        worker.local.task_id = task_id
        try:
            if op in ("fetch", "args"):
                if op == "fetch":  # a nested get or wait (the task lends its CPU meanwhile)
                    ids, deadline, need, until_error = args
                    complete = worker._wait_local(ids, deadline, need, until_error)
                else:  # a task's arguments, which the head sends here
                    ids, = args
                    complete = worker.await_local(ids, None, len(ids))
                found = []
                objects = worker.store.objects
                for object_id in ids:
                    stored = objects.get(object_id)
                    if stored is not None:
                        found.append((object_id, stored.header, wire(stored), stored.error))
                value: Any = (complete, found)
            elif op == "request":
                name, rest = args
                value = worker.request(name, *rest)
            else:
                raise ValueError(f"unknown executor request {op!r}")
            ok = True
        except BaseException as exc:  # noqa: BLE001 - raised again in the executor
            ok, value = False, exc
        finally:
            worker.local.task_id = 0
        try:
            self.reply(proc, req_id, ok, value)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable error
            self.reply(proc, req_id, False, E.HpcrayError(f"{type(exc).__name__}: {exc}"))

    def reply(self, proc: Proc, req_id: int, ok: bool, value: Any) -> None:
        try:
            proc.channel.send(("reply", req_id, ok, value))
        except ChannelClosed:
            pass

    def deliver(self, proc: Proc, object_id: int) -> None:
        stored = self.worker.store.get(object_id)
        if stored is None:
            header, buffers, _ = serialize(E.ObjectLostError(f"object {object_id:016x} is gone"))
            stored = Stored(header, buffers, True)
        try:
            proc.channel.send(("obj", object_id, stored.header, wire(stored), stored.error))
        except ChannelClosed:
            pass

    # -- actors --------------------------------------------------------------------------------
    def create_actor(self, spec: P.TaskSpec, inline: dict) -> None:
        """Starts an executor of the actor's own (in a pool thread) and creates it there; calls
        that arrive meanwhile follow in order."""
        with self.lock:
            self.early[spec.actor_id] = []
        self.worker.executor.submit(self._create_actor, spec, inline)

    def _create_actor(self, spec: P.TaskSpec, inline: dict) -> None:
        proc = self.start()
        proc.actor_id = spec.actor_id
        self.send_task(proc, spec, inline)
        with self.lock:
            while self.early.get(spec.actor_id):
                calls, self.early[spec.actor_id] = self.early[spec.actor_id], []
                for call in calls:
                    self.send_task(proc, *call)
            if self.early.pop(spec.actor_id, None) is None:  # killed meanwhile
                proc.actor_id = 0
                proc.process.kill()
                return
            self.by_actor[spec.actor_id] = proc

    def actor_call(self, spec: P.TaskSpec, inline: dict) -> None:
        with self.lock:
            proc = self.by_actor.get(spec.actor_id)
            if proc is None:
                early = self.early.get(spec.actor_id)
                if early is not None:
                    early.append((spec, inline))
                return
        self.send_task(proc, spec, inline)

    def kill_actor(self, actor_id: int) -> None:
        with self.lock:
            proc = self.by_actor.pop(actor_id, None)
            self.early.pop(actor_id, None)
        if proc is not None:
            proc.actor_id = 0  # an ordered end: not a death to report
            proc.process.kill()

    # -- the end ---------------------------------------------------------------------------
    def close(self) -> None:
        """Ends every executor (the rank is leaving)."""
        self.closed = True
        self.waker.wake()
        with self.lock:
            procs = list(self.procs.values())
        for proc in procs:
            with contextlib.suppress(Exception):  # already gone
                proc.process.kill()
        deadline = time.monotonic() + 2
        for proc in procs:
            proc.process.join(max(0.0, deadline - time.monotonic()))
