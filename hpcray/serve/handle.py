"""DeploymentHandle and DeploymentResponse: calls routed to replicas by this process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable
from typing import Any

from hpcray.exceptions import ActorDiedError

from .router import BackPressureError, Router


class DeploymentUnavailableError(RuntimeError):
    """The deployment was deleted, or has no replica and cannot start one."""


class _Call:
    """One request on its way: which actor method, and how its caller learns the outcome.

    Handle calls get futures; the HTTP ingress passes ``notify(value, exc)`` instead.
    """

    __slots__ = ("args", "future", "kwargs", "method", "notify", "ref_future", "replica",
                 "retries")

    def __init__(self, method: str, args: tuple, kwargs: dict, retries: int = 0,
                 notify: Callable[[Any, BaseException | None], None] | None = None):
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.retries = retries
        self.replica: Any = None
        self.notify = notify
        self.future = self.ref_future = None
        if notify is None:
            self.future = concurrent.futures.Future()
            self.ref_future = concurrent.futures.Future()

    def fail(self, exc: BaseException) -> None:
        if self.notify is not None:
            self.notify(None, exc)
            return
        if not self.future.done():
            self.future.set_exception(exc)
        if not self.ref_future.done():
            self.ref_future.set_exception(exc)

    def succeed(self, value: Any) -> None:
        if self.notify is not None:
            self.notify(value, None)
        elif not self.future.done():
            self.future.set_result(value)


# called on the driver when a call finds its replica dead: (app, deployment, replica id)
replica_died_hook: list[Callable[[str, str, str], None]] = []


class RouterState:
    """This process's view of one deployment: its replicas and the requests it routes."""

    def __init__(self, app: str, deployment: str):
        self.app = app
        self.deployment = deployment
        self.lock = threading.Lock()
        self.router = Router(max_ongoing=5)
        self.replicas: dict[str, Any] = {}   # replica id -> actor handle
        self.version = -1
        self.unavailable: str | None = None

    def snapshot(self) -> tuple:
        with self.lock:
            return (self.app, self.deployment, self.version, dict(self.replicas),
                    self.router.max_ongoing, self.router.max_queued, self.unavailable)

    def update(self, version: int, replicas: dict, max_ongoing: int, max_queued: int,
               unavailable: str | None = None) -> None:
        with self.lock:
            if version <= self.version:
                return
            self.version = version
            self.replicas = dict(replicas)
            self.router.max_ongoing, self.router.max_queued = max_ongoing, max_queued
            self.router.set_replicas(self.replicas)
            self.unavailable = unavailable
            failed = self.router.drop_queued() if unavailable else []
            ready = self.router.take_ready()
        for call in failed:
            call.fail(DeploymentUnavailableError(unavailable))
        for call, rid in ready:
            self.send(call, rid)

    def submit(self, call: _Call) -> None:
        """Sends call to a replica now or queues it; raises BackPressureError when full."""
        with self.lock:
            if self.unavailable:
                raise DeploymentUnavailableError(self.unavailable)
            rid = self.router.acquire(call, http=call.notify is not None)
        if rid is not None:
            self.send(call, rid)

    def send(self, call: _Call, rid: str) -> None:
        actor = self.replicas.get(rid)
        try:
            if actor is None:
                raise ActorDiedError(f"replica {rid} of {self.deployment} is gone")
            ref = getattr(actor, call.method).remote(*call.args, **call.kwargs)
        except BaseException as exc:  # noqa: BLE001 - the caller gets it
            self.finished(call, rid, None, exc)
            return
        call.replica = rid
        if call.ref_future is not None and not call.ref_future.done():
            call.ref_future.set_result(ref)
        ref.future().add_done_callback(functools.partial(self._done, call, rid))

    def _done(self, call: _Call, rid: str, fut: concurrent.futures.Future) -> None:
        self.finished(call, rid, fut, fut.exception())

    def finished(self, call: _Call, rid: str, fut, exc: BaseException | None) -> None:
        died = isinstance(exc, ActorDiedError)
        retry = died and call.retries > 0
        with self.lock:
            self.router.release(rid)
            if died:
                self.replicas.pop(rid, None)
                self.router.remove(rid)
            if retry and self.unavailable:
                retry, exc = False, DeploymentUnavailableError(self.unavailable)
            if retry:
                call.retries -= 1
                try:
                    again = self.router.acquire(call, http=call.notify is not None)
                except BackPressureError:
                    again, retry = None, False
            ready = self.router.take_ready()
        if died:
            for hook in replica_died_hook:
                hook(self.app, self.deployment, rid)
        if retry:
            if again is not None:
                self.send(call, again)
        elif exc is not None:
            call.fail(exc)
        else:
            call.succeed(fut.result())
        for c, r in ready:
            self.send(c, r)

    def load(self) -> tuple[int, int]:
        with self.lock:
            return self.router.num_ongoing, self.router.num_queued


_states: dict[tuple[str, str], RouterState] = {}
_states_lock = threading.Lock()


def state_for(app: str, deployment: str) -> RouterState:
    key = (app, deployment)
    state = _states.get(key)
    if state is None:
        with _states_lock:
            state = _states.setdefault(key, RouterState(app, deployment))
    return state


def apply_snapshot(snapshot: tuple) -> None:
    app, deployment, version, replicas, max_ongoing, max_queued, unavailable = snapshot
    state_for(app, deployment).update(version, replicas, max_ongoing, max_queued, unavailable)


def forget(app: str) -> None:
    with _states_lock:
        for key in [k for k in _states if k[0] == app]:
            del _states[key]


class DeploymentResponse:
    """The future result of a handle call: ``.result(timeout_s=)`` or ``await``."""

    def __init__(self, call: _Call):
        self._call = call

    def result(self, timeout_s: float | None = None) -> Any:
        """Blocks for the value; raises the replica's error, or TimeoutError."""
        try:
            return self._call.future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no result within {timeout_s} s") from None

    def __await__(self):
        return asyncio.wrap_future(self._call.future).__await__()

    def _to_object_ref_sync(self, timeout_s: float | None = None):
        """The ObjectRef of the result, once a replica took the call."""
        return self._call.ref_future.result(timeout_s)

    async def _to_object_ref(self):
        return await asyncio.wrap_future(self._call.ref_future)

    def done(self) -> bool:
        return self._call.future.done()


class DeploymentHandle:
    """Calls a deployment's replicas: ``handle.remote(...)``, ``handle.method.remote(...)``."""

    def __init__(self, deployment_name: str, app_name: str = "default",
                 method_name: str = "__call__"):
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._method = method_name

    def options(self, method_name: str | None = None, **_ignored) -> DeploymentHandle:
        return DeploymentHandle(self.deployment_name, self.app_name,
                                method_name or self._method)

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        return DeploymentHandle(self.deployment_name, self.app_name, name)

    def remote(self, *args, **kwargs) -> DeploymentResponse:
        args = tuple(_ref_of(a) for a in args)
        kwargs = {k: _ref_of(v) for k, v in kwargs.items()}
        call = _Call("handle_request", (self._method, *args), kwargs)
        state_for(self.app_name, self.deployment_name).submit(call)
        return DeploymentResponse(call)

    def __reduce__(self):
        snapshot = state_for(self.app_name, self.deployment_name).snapshot()
        return (_rebuild_handle, (self.deployment_name, self.app_name, self._method, snapshot))

    def __repr__(self) -> str:
        return f"DeploymentHandle(deployment={self.deployment_name!r}, app={self.app_name!r})"


def _ref_of(value: Any) -> Any:
    """A DeploymentResponse passed on is passed as its ObjectRef, resolved by the runtime."""
    if isinstance(value, DeploymentResponse):
        return value._to_object_ref_sync()
    return value


def _rebuild_handle(deployment: str, app: str, method: str, snapshot: tuple) -> DeploymentHandle:
    apply_snapshot(snapshot)
    return DeploymentHandle(deployment, app, method)
