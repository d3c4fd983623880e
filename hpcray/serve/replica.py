"""The replica actor: runs a deployment's class or function on a worker rank."""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import hpcray

from . import handle as handles
from .batching import batch_sizes
from .http import RequestData, Streams, as_asgi, internal_error, plain_response, request_id


@dataclass(frozen=True)
class ReplicaContext:
    """What ``serve.get_replica_context()`` tells code running in a replica."""

    app_name: str
    deployment: str
    replica_id: str
    rank: int
    node_name: str

    @property
    def replica_tag(self) -> str:
        return f"{self.deployment}#{self.replica_id}"


_current = threading.local()


def get_replica_context() -> ReplicaContext:
    """The context of the replica whose code calls this; RuntimeError elsewhere."""
    context = getattr(_current, "context", None)
    if context is None:
        raise RuntimeError("serve.get_replica_context() is called from inside a deployment "
                           "(its __init__ or methods)")
    return context


class Replica:
    """One replica; the controller creates it as an async actor with room for the requests."""

    def __init__(self, app_name: str, deployment: str, replica_id: str, target: Any,
                 init_args: tuple, init_kwargs: dict, user_config: Any = None,
                 asgi_app: Any = None):
        self.name = f"{app_name}#{deployment}#{replica_id}"
        self.ongoing = 0
        self.served = 0
        self.streams = Streams()
        ctx = hpcray.get_runtime_context()
        self.where = f"rank {ctx.get_rank()} on {ctx.get_node_name()}"
        # __init__ and every call run on this actor's one thread (its event loop)
        _current.context = ReplicaContext(app_name, deployment, replica_id, ctx.get_rank(),
                                          ctx.get_node_name())
        self.is_function = inspect.isfunction(target)
        if self.is_function:
            self.instance, self.fn = None, target
        else:
            self.instance = target(*init_args, **init_kwargs)
            self.fn = None
        self.asgi = None
        if asgi_app is not None:
            from .ingress import bind_routes

            self.asgi = bind_routes(asgi_app, self.instance)
        if user_config is not None:
            self._reconfigure_sync(user_config)

    def _target(self, method: str):
        if self.is_function:
            if method != "__call__":
                raise AttributeError(f"deployment {self.name} is a function: it has no method "
                                     f"{method!r}")
            return self.fn
        try:
            return getattr(self.instance, method)
        except AttributeError:
            raise AttributeError(f"deployment {self.name.split('#')[1]} has no method "
                                 f"{method!r}") from None

    async def handle_request(self, method: str, /, *args, **kwargs) -> Any:
        """A call made through a DeploymentHandle."""
        self.ongoing += 1
        try:
            result = self._target(method)(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            if inspect.isgenerator(result) or inspect.isasyncgen(result):
                raise TypeError(f"{method} returned a generator: streaming is served over HTTP; "
                                "through a handle return a list instead")
            return result
        finally:
            self.ongoing -= 1
            self.served += 1

    async def handle_http(self, fields: tuple) -> tuple:
        """An HTTP request from the proxy, as RequestData fields; answers ResponseData fields.

        A user error becomes a bare 500 with the request id; its details go to this rank's
        log and back to the proxy (which shows them only with debug_errors).
        """
        self.ongoing += 1
        req = RequestData(*fields)
        try:
            if self.asgi is not None:
                response = await self.streams.run(self.asgi, req)
            else:
                result = self._target("__call__")(req.request())
                if inspect.isawaitable(result):
                    result = await result
                response = plain_response(result)
                if response is None:
                    response = await self.streams.run(as_asgi(result), req)
        except Exception as exc:  # noqa: BLE001 - user code: the client gets a 500
            rid = request_id(req.headers)
            detail = (f"{type(exc).__name__}: {exc} (replica {self.name}, {self.where})\n"
                      f"{traceback.format_exc()}")
            print(f"hpcray serve: request {rid} failed: {detail}", file=sys.stderr, flush=True)
            response = internal_error(rid, detail=detail)
        finally:
            self.ongoing -= 1
            self.served += 1
        return (response.status, response.headers, response.body, response.stream_id,
                response.detail)

    async def stream_next(self, stream_id: int) -> tuple[bytes, bool]:
        return await self.streams.next(stream_id)

    async def stream_cancel(self, stream_id: int) -> None:
        self.streams.cancel(stream_id)

    async def where_am_i(self) -> str:
        """Answered once the constructor ran: the rank and node of this replica."""
        return self.where

    async def check_health(self) -> None:
        """Calls the user's check_health, if any; its exception marks the replica unhealthy."""
        check = getattr(self.instance, "check_health", None)
        if check is not None:
            result = check()
            if inspect.isawaitable(result):
                await result

    async def stats(self) -> dict:
        sizes = {}
        if self.instance is not None:
            for name, member in inspect.getmembers(type(self.instance)):
                if hasattr(member, "__serve_batch__"):
                    sizes[name] = batch_sizes(self.instance, name)
        return {"ongoing": self.ongoing, "served": self.served, "where": self.where,
                "batch_sizes": sizes, "streams": len(self.streams.open)}

    def _reconfigure_sync(self, user_config: Any) -> Any:
        reconfigure = getattr(self.instance, "reconfigure", None)
        if reconfigure is None:
            raise TypeError(f"user_config was given but {self.name.split('#')[1]} has no "
                            "reconfigure(config) method")
        return reconfigure(user_config)

    async def reconfigure(self, user_config: Any) -> None:
        result = self._reconfigure_sync(user_config)
        if inspect.isawaitable(result):
            await result

    async def update_handles(self, snapshots: list) -> None:
        """New replica sets of the deployments this replica's handles call."""
        for snapshot in snapshots:
            handles.apply_snapshot(snapshot)

    async def drain(self, timeout_s: float) -> int:
        """Waits until no request is ongoing (at most timeout_s); the number left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self.ongoing or self.streams.open) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return self.ongoing
