"""The HTTP ingress: uvicorn on the head rank; requests go to replicas over the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import resource
import socket
import sys
import threading
import time

from hpcray.exceptions import ActorDiedError

from . import handle as handles
from .config import HTTPOptions
from .http import ResponseData, error_response, internal_error, request_id, with_request_id
from .metrics import Metrics
from .router import BackPressureError

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class Ingress:
    """The ASGI app: auth, size limit, routing by prefix, backpressure, metrics."""

    def __init__(self, options: HTTPOptions, routes, status, health=None):
        self.options = options
        self.routes = routes            # () -> {prefix: (app, deployment)}
        self.metrics = Metrics(status)
        self.health = health            # async () -> None when the head makes progress, or why not
        self.expected = f"Bearer {options.token}".encode() if options.token else None

    def match(self, path: str) -> tuple[str, str, str] | None:
        best = None
        for prefix, target in self.routes().items():
            p = prefix.rstrip("/")
            if (path == p or path.startswith(p + "/") or p == "") and \
                    (best is None or len(p) > len(best[0])):
                best = (p, *target)
        return best

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        start = time.perf_counter()
        rid = request_id(scope["headers"])
        reply = functools.partial(_send, send, rid=rid)
        if self.expected is not None and not self._authorized(scope["headers"]):
            await reply(error_response(
                401, "Unauthorized: send 'Authorization: Bearer <token>' (printed when serve "
                     "started, and kept in the job's state directory)",
                [(b"www-authenticate", b"Bearer")]))
            return
        path = scope["path"]
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + \
            sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if head > self.options.max_header_bytes:
            await reply(error_response(431, "Request Header Fields Too Large: the limit is "
                                            f"{self.options.max_header_bytes} bytes",
                                       [(b"connection", b"close")]))
            return
        if path.startswith("/-/"):
            await self._builtin(path, reply)
            return
        target = self.match(path)
        if target is None:
            await reply(error_response(404, f"Not Found: no application serves {path} "
                                            f"(routes: {sorted(self.routes())})"))
            return
        prefix, app, deployment = target
        body = await self._body(scope, receive)
        if body is None:  # the client left before sending its whole request
            return
        if isinstance(body, ResponseData):
            await reply(body)
            self.metrics.observe(app, deployment, body.status, time.perf_counter() - start)
            return
        method = scope["method"]
        # root_path, as in Ray: Serve sits behind a proxy that strips that prefix; routes match
        # the path as it came, and the app sees the prefix in its scope's path and root_path
        root = self.options.root_path
        req = (method, root + path, scope.get("query_string", b""),
               with_request_id(scope["headers"], rid), body, root + prefix, scope.get("client"),
               scope.get("server"), scope.get("scheme", "http"), scope.get("http_version", "1.1"))
        state = handles.state_for(app, deployment)
        response, call = await self._call(state, req, method, deployment, rid)
        if response.detail is not None and self.options.debug_errors:
            response = error_response(response.status, response.detail,
                                      [h for h in response.headers if h[0] == b"retry-after"])
        await reply(response, more=response.stream_id is not None)
        self.metrics.observe(app, deployment, response.status, time.perf_counter() - start)
        if response.stream_id is not None:
            await self._stream(call, state, response.stream_id, send)

    def _authorized(self, headers: list) -> bool:
        for name, value in headers:
            if name == b"authorization":
                return hmac.compare_digest(value, self.expected)
        return False

    async def _body(self, scope: dict, receive) -> bytes | ResponseData | None:
        limit = self.options.max_body_bytes
        too_big = error_response(413, f"Payload Too Large: the limit is {limit} bytes "
                                      "(max_body_bytes)")
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return too_big
                except ValueError:
                    return error_response(400, "Bad Request: invalid Content-Length")
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.incomplete_request_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                return error_response(408, "Request Timeout: the body did not arrive within "
                                           f"{self.options.incomplete_request_timeout_s} s",
                                      [(b"connection", b"close")])
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _failed(self, rid: str, deployment: str, detail: str, status: int = 500,
                what: str = "Internal Server Error", extra: list | None = None) -> ResponseData:
        """Logs a failure with its request id; the client sees the id only (or, with
        debug_errors, the detail)."""
        print(f"hpcray serve: request {rid} to {deployment} failed: {detail}", file=sys.stderr,
              flush=True)
        response = internal_error(rid, status, what, detail=detail)
        response.headers.extend(extra or [])
        return response

    async def _call(self, state, req: tuple, method: str, deployment: str, rid: str):
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def settle(value, exc) -> None:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(value)
                else:
                    waiter.set_exception(exc)

        def notify(value, exc) -> None:
            loop.call_soon_threadsafe(settle, value, exc)

        call = handles._Call("handle_http", (req,), {}, 1 if method in IDEMPOTENT else 0, notify)
        try:
            state.submit(call)
        except BackPressureError as exc:
            return error_response(503, f"Service Unavailable: {deployment} is overloaded ({exc})",
                                  [(b"retry-after", b"1")]), call
        except handles.DeploymentUnavailableError as exc:
            return self._failed(rid, deployment, f"unavailable: {exc}", 503,
                                "Service Unavailable", [(b"retry-after", b"5")]), call
        try:
            if self.options.request_timeout_s is None:
                result = await waiter
            else:
                result = await asyncio.wait_for(waiter, self.options.request_timeout_s)
        except asyncio.TimeoutError:
            return error_response(504, f"Gateway Timeout: {deployment} did not answer within "
                                       f"{self.options.request_timeout_s} s"), call
        except ActorDiedError as exc:
            return self._failed(rid, deployment, f"its replica died while handling the request: "
                                                 f"{exc}"), call
        except Exception as exc:  # noqa: BLE001 - every request gets an answer
            return self._failed(rid, deployment, f"{type(exc).__name__}: {exc}"), call
        return ResponseData(*result), call

    async def _stream(self, call, state, stream_id: int, send) -> None:
        actor = state.replicas.get(call.replica) if call.replica is not None else None
        done = actor is None
        try:
            while not done:
                chunk, done = await actor.stream_next.remote(stream_id)
                await send({"type": "http.response.body", "body": chunk, "more_body": not done})
        except Exception as exc:  # noqa: BLE001 - the status is sent: end the body
            print(f"hpcray serve: stream from {state.deployment} ended early: {exc}",
                  file=sys.stderr)
            if actor is not None:
                with contextlib.suppress(Exception):  # the replica is gone
                    actor.stream_cancel.remote(stream_id)
        if actor is None or not done:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _builtin(self, path: str, send) -> None:
        if path == "/-/healthz":
            why = await self.health() if self.health is not None else None
            if why is None:
                await send(_text(200, b"success", b"text/plain"))
            else:
                await send(error_response(503, f"Service Unavailable: {why}"))
        elif path == "/-/routes":
            routes = {p: app for p, (app, _) in self.routes().items()}
            await send(_text(200, json.dumps(routes).encode(), b"application/json"))
        elif path == "/-/metrics":
            await send(_text(200, self.metrics.render(),
                             b"text/plain; version=0.0.4; charset=utf-8"))
        else:
            await send(error_response(404, f"Not Found: {path}"))


def _text(status: int, body: bytes, kind: bytes) -> ResponseData:
    return ResponseData(status, [(b"content-type", kind),
                                 (b"content-length", str(len(body)).encode())], body)


async def _send(send, response: ResponseData, more: bool = False, rid: str | None = None) -> None:
    headers = response.headers if rid is None else with_request_id(response.headers, rid)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": more})


class HTTPServer:
    """uvicorn in a thread of the driver's process, on a socket bound up front."""

    def __init__(self, options: HTTPOptions, ingress: Ingress):
        import uvicorn

        self.options = options
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((options.host, options.port))
        except OSError as exc:
            self.sock.close()
            raise RuntimeError(f"serve cannot listen on {options.host}:{options.port}: "
                               f"{exc.strerror}; pick another port (port=0 takes a free one)"
                               ) from None
        self.sock.listen(2048)
        self.port = self.sock.getsockname()[1]
        self.max_connections = max_connections(options)
        loop = "uvloop" if _has("uvloop") else "asyncio"
        if _has("httptools"):
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
        else:
            from uvicorn.protocols.http.h11_impl import H11Protocol as base
        config = uvicorn.Config(ingress, log_level="warning", access_log=False, lifespan="off",
                                loop=loop, http=guarded(base, options, self.max_connections),
                                timeout_keep_alive=options.keep_alive_timeout_s, backlog=2048,
                                h11_max_incomplete_event_size=options.max_header_bytes,
                                proxy_headers=False, server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True, name="hpcray-http")
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start within 30 s")
            time.sleep(0.005)

    def _run(self) -> None:
        self.server.run(sockets=[self.sock])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def max_connections(options: HTTPOptions) -> int:
    """options.max_connections, or half the soft open-file limit (at most 1024): the other
    half stays for the MPI library, files and the replicas' traffic."""
    if options.max_connections is not None:
        return options.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(8, min(1024, soft // 2))


def _raw(status: str, body: bytes = b"", extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for the protocol level."""
    return (f"HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n").encode() + extra + b"\r\n" + body


_BUSY = _raw("503 Service Unavailable", b"Service Unavailable: too many connections\n",
             b"retry-after: 1\r\n")
_TOO_BIG = _raw("431 Request Header Fields Too Large")


def guarded(base: type, options: HTTPOptions, limit: int) -> type:
    """uvicorn's HTTP protocol class (h11 or httptools), bounded against clients that hold
    connections: at most ``limit`` connections (a new one closes the longest-idle one, or is
    refused with 503 when every one has a request in progress); a connection whose next
    request has not fully arrived within incomplete_request_timeout_s of its opening or of
    the previous response is closed; request heads beyond max_header_bytes get 431."""
    timeout, max_head = options.incomplete_request_timeout_s, options.max_header_bytes

    class Guarded(base):
        def connection_made(self, transport) -> None:
            self._since = time.monotonic()
            self._head = 0
            self._timer = None
            super().connection_made(transport)
            if len(self.connections) > limit and not _evict(self.connections, self):
                transport.write(_BUSY)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._since = time.monotonic()
            self._timer = self.loop.call_later(timeout, self._expire)

        def _expire(self) -> None:
            self._timer = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

        def _waiting(self) -> bool:
            """No request in progress: between requests, or one not whole yet."""
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._waiting():
                self._head = 0
                return
            self._head += len(data)
            if self._head > max_head and not self.transport.is_closing():
                self.transport.write(_TOO_BIG)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._head = 0
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def _evict(connections, newcomer) -> bool:
    """Closes the connection that has waited longest without a request in progress."""
    idle = [c for c in connections if c is not newcomer and getattr(c, "_timer", None) is not None
            and c._waiting() and not c.transport.is_closing()]
    if not idle:
        return False
    min(idle, key=lambda c: c._since).transport.close()
    return True


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def address(options: HTTPOptions, port: int) -> str:
    host = options.host
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://{host}:{port}"

