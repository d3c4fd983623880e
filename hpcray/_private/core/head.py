"""The head (rank 0): object directory, reference counts, task and actor scheduling.

The driver thread calls the ``on_*`` handlers directly; worker messages reach the
same handlers through the progress thread. Both hold ``self.lock``.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from typing import Any

from ... import exceptions as E
from . import protocol as P
from .actors import Actor, ActorTable, died_error
from .backoff import Backoff
from .directory import LocalCopies, ObjectDirectory, error_blob
from .objects import Stored
from .procs import LoopFailures, process_gone
from .runtime import RankInfo, Runtime
from .scheduler import DEFAULT, Infeasible, InPlacementGroup, Request, Scheduler, shape_of
from .serialization import deserialize, inline_blob

RECALL_AFTER = 0.1  # seconds a task runs before the one queued behind it may be asked back
ULFM_GRACE = 1.0  # seconds a rank's pid may be gone before the head stops waiting for ULFM


class Task:
    """A task, actor creation or actor call the head is responsible for."""

    __slots__ = ("after", "blocked", "cancelled", "next", "pins", "rank", "recalled", "restart",
                 "retries_left", "since", "spec", "waiting")

    def __init__(self, spec: P.TaskSpec):
        self.spec = spec
        self.rank: int | None = None
        self.waiting = 0
        self.retries_left = spec.max_retries
        self.pins = [dep for _, dep in spec.deps] + list(spec.contained)
        self.restart = False  # an actor's creation run again after its process died
        self.blocked = False
        self.cancelled = False
        # queued ahead (see Config.queue_ahead): a running task's successor on its rank, and
        # the task a queued one waits behind (it holds no resources until that ends or blocks)
        self.next: Task | None = None
        self.after: Task | None = None
        self.since = 0.0        # when it began to hold its resources on its rank
        self.recalled = False   # asked back from the rank it waits on


class HeadRuntime(Runtime):
    """Rank 0: runs the driver's calls and schedules everything over the worker ranks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheduler = Scheduler()
        for info in self.ranks[1:]:
            self.scheduler.add_rank(info.rank, info.node_id, info.resources)
        self.directory = ObjectDirectory(self.transport.send, _HeadCopies(self),
                                         lambda rank: self.ranks[rank].alive,
                                         self.actor_orphaned)
        self.objects = self.directory.entries
        self.tasks: dict[int, Task] = {}
        self.children: dict[int, list[int]] = {}  # unfinished task -> tasks it submitted
        self.actor_table = ActorTable(self.transport.send)
        self.actors = self.actor_table.actors
        self.fn_blobs: dict[int, bytes] = {}
        self.fn_sent: list[set[int]] = [set() for _ in self.ranks]
        self.pending_pgs: dict[int, int] = {}
        self.pg_info: dict[int, tuple] = {}  # pg -> (bundles, strategy, ready id, name key)
        self.pg_names: dict[tuple[str, str], int] = {}  # (namespace, name) -> pg
        self.pg_of_actor: dict[int, list[int]] = {}  # actor -> the groups it made (not detached)
        self.dead_ranks: list[int] = []
        self.open_slots: dict[tuple, dict[int, Task]] = {}  # shape -> running, nothing behind
        self.queued_ahead: dict[int, Task] = {}  # tasks waiting behind another on its rank
        self.gone_at: dict[int, float] = {}  # under ULFM: when a rank's pid was first seen gone
        self.pollers = 0  # driver threads inside the runtime; the progress thread steps aside
        self.pollers_lock = threading.Lock()
        self.last_poll = 0.0
        self.handlers = {
            P.SUBMIT: self.on_submit, P.DONE: self.on_done, P.DONE_MANY: self.on_done_many,
            P.REFS: self.on_refs,
            P.WANT: self.on_want, P.PUT: self.on_put, P.LOG: self.on_log,
            P.BLOCKED: self.on_blocked, P.HEARTBEAT: self.on_heartbeat,
            P.REQUEST: self.on_request, P.OBJDATA: self.on_objdata, P.RELEASE: self.on_release,
            P.EVENTS: self.on_events, P.RETURNED: self.on_returned,
        }
        self.timelines: dict[int, dict[int, list]] = {}
        self.ops = {
            "get_actor": self.op_get_actor, "kill": self.op_kill, "cancel": self.op_cancel,
            "cluster_resources": lambda src: self.scheduler.cluster_resources(),
            "available_resources": lambda src: self.scheduler.available_resources(),
            "nodes": self.op_nodes, "pg_create": self.op_pg_create, "pg_remove": self.op_pg_remove,
            "pg_get": self.op_pg_get, "pg_current": self.op_pg_current,
            "pg_ranks": lambda src, pg_id: self.scheduler.placement_group_ranks(pg_id),
            "service": self.op_service, "actor_lost": self.op_actor_lost,
            "named_actors": lambda src, namespace: self.actor_table.names(namespace),
            "unfinished": lambda src, ids: [i for i in ids if i in self.tasks],
            "ready": lambda src, ids: [i for i in ids if (e := self.objects.get(i)) is None
                                       or e.ready],
        }
        self.services: dict[str, Any] = {}  # see op_service
        self.mpi_job: Any = None  # the job's MPI side (job.bootstrap.Job), set at start-up
        self.thread = threading.Thread(target=self.progress_loop, name="hpcray-head", daemon=True)

    # -- the head's half of the conversation -----------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def to_head(self, msg: tuple) -> None:
        """A driver call: handled right here, and it polls for the workers now and then.

        While driver threads are inside the runtime the progress thread steps aside, so
        the two do not fight over the lock and the GIL.
        """
        self.add_poller(1)
        try:
            with self.lock:
                self.drain_refs()
                self.handlers[msg[0]](0, *msg[1:])
                self.flush()
                now = time.monotonic()
                if now - self.last_poll > 2e-4:
                    self.last_poll = now
                    self.progress_once()
        finally:
            self.add_poller(-1)
        if self.store.fired:
            self.run_fired()

    def add_poller(self, delta: int) -> None:
        with self.pollers_lock:  # driver threads may be many (futures, pools)
            self.pollers += delta

    def request(self, op: str, *args) -> Any:
        with self.lock:
            self.drain_refs()
            try:
                result = self.ops[op](0, *args)
            finally:
                self.flush()
        if self.store.fired:
            self.run_fired()
        return result

    def progress_loop(self) -> None:
        """The head's own progress; it idles while a driver thread polls in get()."""
        backoff = self.backoff
        self.next_check = 0.0
        failing = LoopFailures(f"rank 0 (pid {self.pid} on {self.host}): the head's progress loop")
        while not self.stopping:
            try:
                busy = self.progress_once() if not self.pollers else False
                now = time.monotonic()
                if now >= self.next_check:
                    self.next_check = now + 0.2
                    self.check_ranks(now)
                    if self.queued_ahead:
                        with self.lock:
                            self.recall_stalled(now)
                failing.ok()
            except Exception as exc:  # noqa: BLE001 - reported; the loop must go on
                failing.failed(exc)
                busy = False
            if busy:
                backoff.reset()
            else:
                backoff.sleep()

    def before_poll(self) -> None:
        self.drain_refs()

    def after_poll(self) -> None:
        self.flush()

    def may_poll(self) -> bool:
        return True

    def await_local(self, ids: list[int], deadline: float | None, need: int,
                    until_error: bool = False) -> bool:
        self.add_poller(1)
        try:
            return super().await_local(ids, deadline, need, until_error)
        finally:
            self.add_poller(-1)

    def on_heartbeat(self, src: int, quiet: float = 0.0) -> None:
        """quiet: seconds (inf: until the next heartbeat) the rank may then stay silent."""
        self.ranks[src].last_seen = time.monotonic() + quiet

    def check_soon(self) -> None:
        """Signal-safe (one attribute store, no lock): the progress loop checks rank liveness
        at its next turn (it sleeps at most HPCRAY_BACKOFF_MAX)."""
        self.next_check = 0.0

    def flush(self) -> None:
        """Sends the FREE messages batched while handling."""
        self.directory.flush()

    # -- references --------------------------------------------------------------------------
    def drain_refs(self) -> None:
        change = self.directory.ref_change
        for object_id, delta in self.refs.drain():
            change(object_id, delta)

    def on_refs(self, src: int, changes: list) -> None:
        for object_id, delta in changes:
            self.directory.ref_change(object_id, delta)

    # -- objects -----------------------------------------------------------------------------
    error_blob = staticmethod(error_blob)

    def on_put(self, src: int, object_id: int, inline, size: int, contained: list) -> None:
        self.directory.put(src, object_id, inline, size, contained)

    def set_ready(self, object_id: int, inline=None, location: int | None = None, size: int = 0,
                  contained=()) -> None:
        dependents = self.directory.mark_ready(object_id, inline, location, size, contained)
        if dependents:
            self.settle(dependents, inline)

    def settle(self, dependents: list, blob: tuple | None) -> None:
        """Moves on the tasks waiting for an object that is now ready (or failed: blob)."""
        failed = blob is not None and blob[2]
        for task in dependents:
            if task.spec.task_id not in self.tasks:
                continue
            if failed:
                self.fail_task(task, blob)
            else:
                task.waiting -= 1
                if task.waiting == 0:
                    self.task_ready(task)

    def on_want(self, src: int, ids: list) -> None:
        self.directory.want(src, ids)

    # -- tasks -------------------------------------------------------------------------------
    def on_submit(self, src: int, spec: P.TaskSpec | tuple) -> None:
        if type(spec) is tuple:
            spec = P.TaskSpec(*spec)
        task = Task(spec)
        for object_id in spec.return_ids:
            self.directory.add(object_id, 1, spec.task_id)
        if spec.fn_blob is not None:
            self.fn_blobs[spec.fn_id] = spec.fn_blob
            self.fn_sent[src].add(spec.fn_id)
            spec.fn_blob = None
        try:
            if spec.kind == P.ACTOR_CREATE:
                self.new_actor(task)
            elif spec.kind == P.NORMAL:
                self.scheduler.check_feasible(spec.resources, spec.strategy)
        except (Infeasible, ValueError) as exc:
            if src == 0:
                for object_id in spec.return_ids:
                    del self.objects[object_id]
                raise
            self.tasks[spec.task_id] = task
            self.fail_task(task, self.error_blob(exc))
            return
        self.tasks[spec.task_id] = task
        parent = spec.options.get("parent")
        if parent in self.tasks:  # for cancel(recursive=True)
            self.children.setdefault(parent, []).append(spec.task_id)
        self.directory.pin(task.pins)
        for _, object_id in spec.deps:
            entry = self.objects.get(object_id)
            if entry is None:
                self.fail_task(task, self.error_blob(E.ObjectFreedError(
                    f"argument object {object_id:016x} of {spec.name} was already freed")))
                return
            if not entry.ready:
                task.waiting += 1
                entry.dependents.append(task)
            elif entry.inline is not None and entry.inline[2]:
                self.fail_task(task, entry.inline)
                return
        if spec.kind == P.ACTOR_CALL:
            actor = self.actors.get(spec.actor_id)
            if actor is None or actor.dead:
                self.fail_task(task, self.error_blob(died_error(actor, spec.name)))
                return
            if spec.max_retries is None:  # the actor's max_task_retries
                task.retries_left = actor.task_retries
            actor.queue.append(task)
            self.pump_actor(actor)
        elif task.waiting == 0:
            self.task_ready(task)

    def task_ready(self, task: Task) -> None:
        spec = task.spec
        if spec.kind == P.ACTOR_CALL:
            self.pump_actor(self.actors[spec.actor_id])
            return
        request = Request(spec.task_id, spec.resources, spec.strategy)
        rank = self.scheduler.try_place(request)
        if rank is not None:
            self.dispatch(task, rank)
        elif not self.queue_behind(task):
            self.scheduler.submit(request)

    def schedule_queued(self) -> None:
        for request, rank in self.scheduler.schedule():
            task = self.tasks.get(request.id)
            if task is None:
                self.scheduler.release(rank, request.resources, self.pg_of(request.strategy))
            else:
                self.dispatch(task, rank)
        for request, why in self.scheduler.take_infeasible():
            task = self.tasks.get(request.id)
            if task is not None:
                self.fail_task(task, self.error_blob(Infeasible(why)))
        for pg_id, ready_id in list(self.pending_pgs.items()):
            if self.scheduler.placement_group_ready(pg_id):
                del self.pending_pgs[pg_id]
                self.set_ready(ready_id, inline_blob(True))

    @staticmethod
    def pg_of(strategy) -> InPlacementGroup | None:
        return strategy if isinstance(strategy, InPlacementGroup) else None

    def dispatch(self, task: Task, rank: int, behind: Task | None = None) -> None:
        """Sends a task to rank (``behind``: to start there when that task ends or blocks)."""
        spec = task.spec
        task.rank = rank
        inline = self.arguments(spec, rank)
        if spec.kind == P.ACTOR_CREATE:
            actor = self.actors[spec.actor_id]
            actor.rank = rank
            placed = spec.resources
            keep = actor.lifetime
            extra = {k: v - keep.get(k, 0.0) for k, v in placed.items() if v - keep.get(k, 0.0) > 0}
            if extra:
                self.scheduler.release(rank, extra, self.pg_of(spec.strategy))
        sent = self.fn_sent[rank]
        if spec.fn_id and spec.fn_id not in sent:
            spec.fn_blob = self.fn_blobs[spec.fn_id]
            sent.add(spec.fn_id)
        if behind is None:
            self.transport.send(rank, (P.TASK, spec.wire(), inline))
        else:
            self.transport.send(rank, (P.TASK, spec.wire(), inline, behind.spec.task_id))
        spec.fn_blob = None
        if spec.kind == P.ACTOR_CREATE:
            self.pump_actor(self.actors[spec.actor_id])
        elif spec.kind == P.NORMAL and behind is None:
            self.holds(task)

    def arguments(self, spec: P.TaskSpec, rank: int) -> dict:
        """The task's small arguments, to send with it; the others go to rank directly."""
        inline = {}
        for _, object_id in spec.deps:
            entry = self.objects.get(object_id)
            if entry is None:
                continue
            if entry.inline is not None:
                inline[object_id] = entry.inline
            else:
                self.directory.deliver(object_id, entry, rank)
        return inline

    # -- queueing ahead (Config.queue_ahead) -------------------------------------------------
    @staticmethod
    def shape_key(task: Task) -> tuple | None:
        """Tasks of one key may follow each other on a rank (None: this one never does)."""
        spec = task.spec
        return shape_of(spec.resources) if spec.strategy == DEFAULT else None

    def holds(self, task: Task) -> None:
        """task now runs on its rank holding its resources: the next queued task of its shape
        may wait behind it there."""
        task.since = time.monotonic()
        key = self.shape_key(task) if self.config.queue_ahead else None
        if key is None:
            return
        request = self.scheduler.take_next(task.spec.resources)
        follower = self.tasks.get(request.id) if request is not None else None
        if follower is not None:
            self.link(follower, task)
        else:
            self.open_slot(task, key)

    def queue_behind(self, task: Task) -> bool:
        """Sends a task that fits nowhere now to wait behind a running one of its shape."""
        key = self.shape_key(task) if self.config.queue_ahead else None
        slots = self.open_slots.get(key) if key is not None else None
        if not slots or not self.scheduler.only_waiting(task.spec.resources):
            return False
        leader = slots.pop(next(iter(slots)))  # the longest running
        self.link(task, leader)
        return True

    def link(self, task: Task, leader: Task) -> None:
        task.after, leader.next = leader, task
        self.queued_ahead[task.spec.task_id] = task
        self.dispatch(task, leader.rank, behind=leader)

    def open_slot(self, task: Task, key: tuple) -> None:
        """task runs with nothing behind it: the next of its shape may wait behind it."""
        self.open_slots.setdefault(key, {})[task.spec.task_id] = task

    def close_slot(self, task: Task) -> None:
        slots = self.open_slots.get(self.shape_key(task))
        if slots:
            slots.pop(task.spec.task_id, None)

    def hand_over(self, task: Task) -> bool:
        """task ended or blocked: the one behind it (if any) now holds its resources."""
        self.close_slot(task)
        follower = task.next
        if follower is None:
            return False
        task.next = follower.after = None
        self.queued_ahead.pop(follower.spec.task_id, None)
        self.holds(follower)
        return True

    def unlink(self, task: Task) -> None:
        """task no longer waits behind another (it ended, or came back, before it started)."""
        leader = task.after
        task.after = None
        self.queued_ahead.pop(task.spec.task_id, None)
        if leader is not None and leader.next is task:
            leader.next = None
            if leader.spec.task_id in self.tasks and not leader.blocked:
                self.open_slot(leader, self.shape_key(leader))

    def recall_stalled(self, now: float) -> None:
        """Asks back tasks waiting behind one that has run a while, when a rank could run
        them now (a long task must not hold up the one behind it while ranks idle)."""
        for task in list(self.queued_ahead.values()):
            leader = task.after
            if task.recalled or leader is None or now - leader.since < RECALL_AFTER:
                continue
            if self.scheduler.fits_now(task.spec.resources):
                task.recalled = True
                self.transport.send(task.rank, (P.UNQUEUE, task.spec.task_id))
        self.flush()

    def on_returned(self, src: int, task_id: int) -> None:
        task = self.tasks.get(task_id)
        if task is None or task.after is None or task.rank != src:
            return
        self.unlink(task)
        task.rank, task.recalled = None, False
        self.task_ready(task)

    def on_done(self, src: int, task_id: int, results: list, retryable: bool) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            self.directory.free_out[src].extend(r[0] for r in results if r[1] is None)
            return
        spec = task.spec
        freed = False  # resources came back: queued requests may fit now
        if spec.kind == P.NORMAL:
            if task.after is not None:  # ended before it started (cancelled while queued)
                self.unlink(task)
            elif task.blocked:  # (its slot closed when it blocked)
                task.blocked = False
            elif not self.hand_over(task):
                self.scheduler.release(src, spec.resources, self.pg_of(spec.strategy))
                freed = True
            if retryable and task.retries_left > 0 and not task.cancelled:
                task.retries_left -= 1
                task.rank = None
                self.task_ready(task)
                self.schedule_queued()
                return
        if spec.kind == P.ACTOR_CALL and retryable and task.retries_left and \
                not task.cancelled and self.retry_call(task):
            return
        del self.tasks[task_id]
        self.children.pop(task_id, None)
        if not task.restart:
            for object_id, inline, size, contained, _ in results:
                self.set_ready(object_id, inline, None if inline is not None else src, size,
                               contained)
        if not (spec.kind == P.ACTOR_CREATE and self.keeps_arguments(spec.actor_id)):
            self.directory.unpin(task.pins)
        if spec.kind == P.ACTOR_CALL:
            actor = self.actors[spec.actor_id]
            actor.inflight.discard(task_id)
            if self.actor_table.should_end(actor):
                self.end_orphan(actor)
        elif spec.kind == P.ACTOR_CREATE:
            failed = results and results[0][1] is not None and results[0][4]
            if failed:
                header, buffers, _ = results[0][1]
                self.end_actor(self.actors[spec.actor_id],
                               f"its __init__ raised: {deserialize(header, buffers)}",
                               notify_rank=False)
        if freed:
            self.schedule_queued()

    def on_done_many(self, src: int, reports: list) -> None:
        for task_id, results, retryable in reports:
            self.on_done(src, task_id, results, retryable)

    def fail_task(self, task: Task, blob: tuple) -> None:
        """Ends a task that will not run (or not again): its results become the error."""
        spec = task.spec
        if self.tasks.pop(spec.task_id, None) is None:
            return
        self.children.pop(spec.task_id, None)
        if task.rank is None and spec.kind == P.NORMAL:
            self.scheduler.cancel(spec.task_id)
        if task.after is not None:
            self.unlink(task)
        for object_id in spec.return_ids:
            self.set_ready(object_id, blob)
        self.directory.unpin(task.pins)
        if spec.kind == P.ACTOR_CREATE:
            actor = self.actors.get(spec.actor_id)
            if actor is not None and not actor.dead:
                self.end_actor(actor, "it could not be created", notify_rank=False)

    def on_blocked(self, src: int, task_id: int, blocked: bool) -> None:
        """A task waiting in a nested get lends its resources to others, as Ray does."""
        task = self.tasks.get(task_id)
        if task is None or task.spec.kind != P.NORMAL or task.rank != src or task.blocked == blocked:
            return
        if task.after is not None:  # its rank started it: the one before it ended or blocked
            self.hand_over(task.after)
        task.blocked = blocked
        spec = task.spec
        if blocked:
            if not self.hand_over(task):
                self.scheduler.release(src, spec.resources, self.pg_of(spec.strategy))
            self.schedule_queued()
        else:
            self.scheduler.acquire(src, spec.resources, self.pg_of(spec.strategy))

    # -- actors ------------------------------------------------------------------------------
    def new_actor(self, task: Task) -> None:
        spec = task.spec
        self.scheduler.check_feasible(spec.resources, spec.strategy)
        self.actor_table.add(task)
        self.objects[spec.return_ids[0]].actor_id = spec.actor_id

    def pump_actor(self, actor: Actor) -> None:
        """Sends queued calls to the actor in submission order, each once its args are ready."""
        tasks = self.tasks
        for task in self.actor_table.next_calls(actor, lambda t: t.spec.task_id in tasks):
            self.dispatch(task, actor.rank)

    def retry_call(self, task: Task) -> bool:
        """An actor call that raised an exception it retries on (retry_exceptions) runs
        again, before the calls queued behind it (max_task_retries); False if its actor is
        gone."""
        actor = self.actors.get(task.spec.actor_id)
        if actor is None or actor.dead:
            return False
        task.retries_left -= task.retries_left > 0
        actor.inflight.discard(task.spec.task_id)
        task.rank = None
        actor.queue.appendleft(task)
        self.pump_actor(actor)
        return True

    def keeps_arguments(self, actor_id: int) -> bool:
        """A restartable actor keeps its constructor's arguments while it lives."""
        actor = self.actors.get(actor_id)
        return actor is not None and not actor.dead and actor.restarts_left != 0

    def op_actor_lost(self, src: int, actor_id: int, why: str) -> None:
        """An actor's process died (its rank lives on): restart it there, or end it."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.dead:
            return
        if not self.actor_table.may_restart(actor):
            self.end_actor(actor, why, notify_rank=False)
            return
        create = self.restart_actor(actor, why, f"on rank {actor.rank}")
        create.rank = actor.rank  # (not dispatch(): its resources stayed held there)
        inline = self.arguments(create.spec, actor.rank)
        self.transport.send(actor.rank, (P.TASK, create.spec.wire(), inline))
        self.pump_actor(actor)

    def restart_actor(self, actor: Actor, why: str, where: str) -> Task:
        """Takes one of the actor's restarts: its calls in flight go back to the front of its
        queue (as their max_task_retries allow) or fail. Returns its creation task, to run
        again on its rank or to place anew."""
        restarts_before = actor.restarts_left
        self.member_gone(why, actor=actor)  # a restarted actor is a new member
        calls = [self.tasks[t] for t in self.actor_table.restart(actor, why) if t in self.tasks]
        for task in reversed(calls):
            if task.retries_left and not task.cancelled:
                task.retries_left -= task.retries_left > 0
                task.rank = None
                actor.queue.appendleft(task)
            else:
                self.fail_task(task, self.error_blob(E.ActorDiedError(
                    f"the actor's process died while running {task.spec.name} ({why}); it is "
                    "restarting, and the call is not retried (set max_task_retries to retry "
                    "calls)")))
        create = Task(actor.create.spec)
        create.restart = True
        self.tasks[create.spec.task_id] = create
        print(f"hpcray: restarting actor {actor.class_name} {where} "
              f"({why}; restarts left: "
              f"{'unlimited' if restarts_before < 0 else restarts_before - 1})",
              file=sys.stderr, flush=True)
        return create

    def end_actor(self, actor: Actor, cause: str, notify_rank: bool = True) -> None:
        if actor.dead:
            return
        self.member_gone(cause, actor=actor, ended=True)
        if actor.restarts_left != 0 and actor.create.spec.task_id not in self.tasks:
            self.directory.unpin(actor.create.pins)  # kept for restarts
        placed_alive = actor.rank is not None and self.ranks[actor.rank].alive
        inflight, queued = self.actor_table.end(actor, cause, notify_rank and placed_alive)
        if placed_alive and actor.lifetime:
            self.scheduler.release(actor.rank, actor.lifetime,
                                   self.pg_of(actor.create.spec.strategy))
        elif actor.rank is None and actor.create.spec.task_id in self.tasks:
            self.scheduler.cancel(actor.create.spec.task_id)
        pending = [self.tasks[t] for t in inflight if t in self.tasks] + queued
        for task in pending:
            self.fail_task(task, self.error_blob(died_error(actor, task.spec.name)))
        create = self.tasks.get(actor.create.spec.task_id)
        if create is not None:
            self.fail_task(create, self.error_blob(died_error(actor, create.spec.name)))
        for pg_id in self.pg_of_actor.pop(actor.actor_id, ()):  # fate-shared with their maker
            if pg_id in self.pg_info:
                self.op_pg_remove(0, pg_id)
        self.schedule_queued()

    def actor_orphaned(self, actor_id: int) -> None:
        actor = self.actor_table.orphan(actor_id)
        if actor is not None:
            self.end_orphan(actor)

    def end_orphan(self, actor: Actor) -> None:
        self.end_actor(actor, "every handle to it went out of scope")
        self.actor_table.remove(actor.actor_id)

    # -- requests ----------------------------------------------------------------------------
    def on_request(self, src: int, req_id: int, op: str, args: tuple) -> None:
        try:
            self.transport.send(src, (P.REPLY, req_id, True, self.ops[op](src, *args)))
        except Exception as exc:  # noqa: BLE001 - the error is the reply
            self.transport.send(src, (P.REPLY, req_id, False, exc))

    def op_get_actor(self, src: int, name: str, namespace: str = ""):
        actor = self.actor_table.by_name(name, namespace)
        spec = actor.create.spec
        return actor.actor_id, spec.return_ids[0], spec.options.get("class_info")

    def op_service(self, src: int, path: str, action: str, *args):
        """A head-side service of a library above core, named "module:Class" by its callers
        (hpcray.collective's group rendezvous), made on first use; ``call(action, *args)``
        runs under the head's lock."""
        service = self.services.get(path)
        if service is None:
            module, _, name = path.partition(":")
            if not module.startswith("hpcray."):
                raise ValueError(f"head services come from hpcray's own modules, not {module!r}")
            service = self.services[path] = getattr(importlib.import_module(module), name)()
        return service.call(action, *args)

    def member_gone(self, reason: str, actor: Actor | None = None,
                    rank: RankInfo | None = None, ended: bool = False) -> None:
        """An actor ended (for good) or restarted, or a rank died (reason says why): head
        services with a ``member_gone(actor_id, mpi_rank, reason, host, actors, ended)`` hook
        (hpcray.collective's rendezvous: the groups it was in) return [(rank, payload)], sent
        as NOTICEs."""
        if not self.services:
            return
        if actor is not None:
            actors = {actor.actor_id: actor.class_name}
            info = self.ranks[actor.rank] if actor.rank is not None else None
            actor_id, mpi_rank = actor.actor_id, None
        else:
            actors = {a.actor_id: a.class_name for a in self.actor_table.on_rank(rank.rank)}
            info, actor_id, mpi_rank = rank, None, rank.rank
        host = info.host if info is not None else ""
        for path, service in list(self.services.items()):
            hook = getattr(service, "member_gone", None)
            if hook is None:
                continue
            try:
                notices = hook(actor_id, mpi_rank, reason, host, actors, ended)
            except Exception as exc:  # noqa: BLE001 - a library's bug must not stop the head
                print(f"hpcray: {path}.member_gone failed: {exc!r}", file=sys.stderr, flush=True)
                continue
            for dest, payload in notices:
                if self.ranks[dest].alive:
                    self.transport.send(dest, (P.NOTICE, path, payload))

    def op_kill(self, src: int, actor_id: int,
                cause: str = "it was killed with hpcray.kill()", restart: bool = False) -> None:
        actor = self.actors.get(actor_id)
        if actor is None:
            return
        if restart and self.actor_table.may_restart(actor) and actor.rank is not None:
            self.transport.send(actor.rank, (P.KILL_ACTOR, actor.actor_id))
            self.op_actor_lost(src, actor_id, "it was killed with hpcray.kill(no_restart=False)")
        else:
            self.end_actor(actor, cause)

    def op_cancel(self, src: int, object_id: int, force: bool, recursive: bool = True) -> bool:
        entry = self.objects.get(object_id)
        task = self.tasks.get(entry.producer) if entry is not None else None
        if task is None:
            return False
        if force and task.spec.kind != P.NORMAL:
            raise ValueError(f"cancel(force=True) ends a task's worker; {task.spec.name} is an "
                             "actor call: cancel it without force, or hpcray.kill() the actor")
        descendants = []  # as Ray: every task and actor call submitted under it, found first
        if recursive:
            stack = list(self.children.get(task.spec.task_id, ()))
            while stack:
                child = self.tasks.get(stack.pop())
                if child is not None and child.spec.kind != P.ACTOR_CREATE:
                    descendants.append(child)
                    stack.extend(self.children.get(child.spec.task_id, ()))
        self.cancel_task(task, force)
        for child in descendants:  # (force is for normal tasks only, as in Ray)
            if child.spec.task_id in self.tasks:
                self.cancel_task(child, force and child.spec.kind == P.NORMAL)
        return True

    def cancel_task(self, task: Task, force: bool) -> None:
        task.cancelled = True
        if task.rank is None:
            if task.spec.kind == P.ACTOR_CALL:
                actor = self.actors.get(task.spec.actor_id)
                if actor is not None and task in actor.queue:
                    actor.queue.remove(task)
            self.fail_task(task, self.error_blob(E.TaskCancelledError(
                f"{task.spec.name} was cancelled before it started")))
        else:
            self.transport.send(task.rank, (P.CANCEL, task.spec.task_id, force))

    def op_nodes(self, src: int) -> list[dict]:
        nodes: dict[str, dict] = {}
        for info in self.ranks:
            node = nodes.setdefault(info.node_id, {
                "NodeID": info.node_id, "NodeName": info.node_name, "NodeManagerHostname": info.host,
                "Alive": False, "Resources": {}, "Ranks": [], "Slurm": info.slurm_node})
            node["Alive"] = node["Alive"] or info.alive
            node["Ranks"].append(info.rank)
            for gpu in info.gpus:
                gpus = node.setdefault("GPUs", {})
                entry = gpus.setdefault(gpu.uuid or gpu.id, {**gpu.describe(), "Ranks": []})
                entry["Ranks"].append(info.rank)
            if info.alive:
                for k, v in info.resources.items():
                    node["Resources"][k] = node["Resources"].get(k, 0.0) + v
        for node in nodes.values():
            node["GPUs"] = list(node.get("GPUs", {}).values())
        return list(nodes.values())

    def op_pg_create(self, src: int, pg_id: int, bundles: list, strategy: str, ready_id: int,
                     name: str = "", namespace: str = "", creator_actor: int = 0) -> None:
        """A placement group. Named: found by get_placement_group in its namespace. Made by
        an actor without lifetime="detached": removed when that actor ends, as in Ray (every
        other one lives until the job ends, the job being the cluster)."""
        if name:
            if (namespace, name) in self.pg_names:
                raise ValueError(f"a placement group named {name!r} already exists in namespace "
                                 f"{namespace!r}: remove it first, or pick another name")
            self.pg_names[(namespace, name)] = pg_id
        self.pg_info[pg_id] = (bundles, strategy, ready_id, (namespace, name) if name else None)
        if creator_actor:
            self.pg_of_actor.setdefault(creator_actor, []).append(pg_id)
        self.scheduler.create_placement_group(pg_id, bundles, strategy)
        self.directory.add(ready_id)
        self.directory.pin([ready_id])  # get_placement_group hands it out while the group lives
        if self.scheduler.placement_group_ready(pg_id):
            self.set_ready(ready_id, inline_blob(True))
        else:
            self.pending_pgs[pg_id] = ready_id

    def op_pg_get(self, src: int, name: str, namespace: str) -> tuple:
        pg_id = self.pg_names.get((namespace, name))
        if pg_id is None:
            raise ValueError(f"no placement group named {name!r} in namespace {namespace!r} "
                             "(create it with placement_group(..., name=...); a removed one is "
                             "gone)")
        bundles, strategy, ready_id, _ = self.pg_info[pg_id]
        return pg_id, bundles, strategy, ready_id

    def op_pg_current(self, src: int, task_id: int) -> tuple | None:
        """The placement group the running task, or the actor whose call it is, was placed in."""
        task = self.tasks.get(task_id)
        if task is None:
            return None
        spec = task.spec
        if spec.kind == P.ACTOR_CALL:
            actor = self.actors.get(spec.actor_id)
            spec = actor.create.spec if actor is not None else spec
        group = self.pg_of(spec.strategy)
        if group is None or group.pg_id not in self.pg_info:
            return None
        bundles, strategy, ready_id, _ = self.pg_info[group.pg_id]
        return group.pg_id, bundles, strategy, ready_id

    def op_pg_remove(self, src: int, pg_id: int) -> None:
        info = self.pg_info.pop(pg_id, None)
        if info is not None:
            if info[3] is not None:
                self.pg_names.pop(info[3], None)
            self.directory.unpin([info[2]])
        self.scheduler.remove_placement_group(pg_id)
        ready_id = self.pending_pgs.pop(pg_id, None)
        if ready_id is not None:
            self.set_ready(ready_id, self.error_blob(E.HpcrayError(
                f"placement group {pg_id} was removed before it was ready")))
        self.schedule_queued()

    # -- the timeline -------------------------------------------------------------------------
    def on_events(self, src: int, req_id: int, events: list) -> None:
        slot = self.timelines.get(req_id)
        if slot is not None:
            slot[src] = events

    def collect_events(self, timeout: float = 10.0) -> dict[int, list]:
        """The task events every live rank recorded, by rank (ranks that do not answer in
        ``timeout`` seconds are left out)."""
        req_id = self.ids.next()
        with self.lock:
            slot = self.timelines[req_id] = {0: list(self.events)}
            asked = [info.rank for info in self.ranks[1:] if info.alive]
            for rank in asked:
                self.transport.send(rank, (P.TIMELINE, req_id))
        deadline = time.monotonic() + timeout
        backoff = Backoff(self.config.spin_time, self.config.backoff_max)
        self.add_poller(1)
        try:
            while time.monotonic() < deadline and any(
                    r not in slot and self.ranks[r].alive for r in asked):
                if self.progress_once():
                    backoff.reset()
                else:
                    backoff.sleep()
        finally:
            self.add_poller(-1)
            with self.lock:
                self.timelines.pop(req_id, None)
        return dict(slot)

    # -- output and failures -----------------------------------------------------------------
    def on_log(self, src: int, text: str, is_err: bool, pid: int = 0) -> None:
        info = self.ranks[src]
        prefix = f"(rank={src} pid={pid or info.pid} host={info.host}) "
        stream = sys.stderr if is_err else sys.stdout
        stream.write("".join(prefix + line + "\n" for line in text.splitlines()))
        stream.flush()

    def check_ranks(self, now: float) -> None:
        """Declares ranks dead: those MPI reported (ULFM), by pid on this host, by heartbeat
        silence on other hosts.

        ULFM reports a rank killed by a signal within milliseconds, but not one that exited
        with an error status: under ULFM the pid stays the fallback, after a grace in which
        MPI's report comes first."""
        transport = self.transport
        for rank in transport.take_failed():
            if self.ranks[rank].alive:
                with self.lock:
                    self.rank_died(self.ranks[rank], "MPI reported its failure (ULFM)")
        for info in self.ranks[1:]:
            if not info.alive:
                continue
            if info.host == self.host:
                gone, how = process_gone(info.pid), "its process is gone"
                if gone and transport.ulfm:
                    gone = now - self.gone_at.setdefault(info.rank, now) > ULFM_GRACE
            else:
                gone = now - info.last_seen > self.config.heartbeat_timeout
                how = f"no heartbeat for {self.config.heartbeat_timeout:g} s"
            if gone:
                with self.lock:
                    self.rank_died(info, how)

    def rank_died(self, info: RankInfo, how: str = "") -> None:
        rank = info.rank
        info.alive = False
        self.dead_ranks.append(rank)
        self.transport.forget(rank)  # its queued and unfinished sends are dropped
        died = f"rank {rank} (pid {info.pid} on {info.host}) died" + (f" ({how})" if how else "")
        print(f"hpcray: {died}", file=sys.stderr, flush=True)
        self.scheduler.remove_rank(rank)
        self.member_gone(died, rank=info)
        why = f"its rank {rank} on {info.host} died"
        restarts = []  # restartable actors come back on other ranks, as Ray's on other nodes
        for actor in self.actor_table.on_rank(rank):
            if self.actor_table.may_restart(actor) and \
                    actor.create.spec.task_id not in self.tasks:  # created (else: it fails)
                restarts.append(self.restart_actor(actor, why, "on another rank"))
                actor.rank = None
            else:
                self.end_actor(actor, why, notify_rank=False)
        crashed = E.WorkerCrashedError(f"rank {rank} (pid {info.pid} on {info.host}) died while "
                                       "running the task")
        lost_tasks = [t for t in self.tasks.values() if t.rank == rank]
        for task in lost_tasks:  # queued ahead there: nothing is handed over any more
            if task.spec.kind == P.NORMAL:
                self.close_slot(task)
                self.queued_ahead.pop(task.spec.task_id, None)
                task.after = task.next = None
        for task in lost_tasks:
            if task.spec.kind == P.NORMAL and task.retries_left > 0 and not task.cancelled:
                task.retries_left -= 1
                task.rank = None
                task.blocked = False
                self.task_ready(task)
            else:
                self.fail_task(task, self.error_blob(crashed))
        lost = E.ObjectLostError(f"the only copy was on rank {rank} (host {info.host}), which died")
        blob, dependents = self.directory.rank_lost(rank, lost)
        self.settle(dependents, blob)
        for create in restarts:  # placed once the rank's objects are known lost
            self.task_ready(create)
        self.schedule_queued()
        self.flush()

    def shutdown(self) -> None:
        """Stops the workers and the progress thread."""
        with self.lock:
            self.drain_refs()
            for info in self.ranks[1:]:
                if info.alive:
                    self.transport.send(info.rank, (P.SHUTDOWN,))
        deadline = time.monotonic() + 5
        while self.transport.pending_sends() and time.monotonic() < deadline:
            self.transport.test_sends()
            time.sleep(0.001)
        self.stopping = True
        self.backoff.kick()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)


class _HeadCopies(LocalCopies):
    """Rank 0's own store, as the object directory sees it."""

    def __init__(self, head: HeadRuntime):
        self.head = head

    def add(self, object_id: int, blob: tuple) -> None:
        header, buffers, error = blob
        self.head.store.add(object_id, Stored(header, buffers, error))

    def push(self, object_id: int, dest: int) -> None:
        head = self.head
        stored = head.store.get(object_id)
        reqs = head.send_object(dest, object_id, stored)
        if stored.sending is not None:
            stored.sending.extend(reqs)

    def free(self, object_id: int) -> None:
        self.head.store.free((object_id,), self.head.transport.pool)
