"""HTTP requests and responses as they cross the runtime between proxy and replica."""

from __future__ import annotations

import asyncio
import copyreg
import inspect
import itertools
import json
import secrets
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

try:
    from starlette.datastructures import State
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
except ImportError as exc:  # pragma: no cover - the serve extra brings starlette
    raise ImportError('hpcray.serve needs the serve extra: pip install "hpcray[serve]"') from exc


def _reduce_state(state: State):
    return State, (dict(state._state),)


# An app's State recurses forever when unpickled by default; FastAPI apps travel to replicas.
copyreg.pickle(State, _reduce_state)


@dataclass
class RequestData:
    """The parts of an ASGI HTTP request a replica needs to rebuild it."""

    method: str
    path: str
    query_string: bytes = b""
    headers: list = field(default_factory=list)   # [(name, value)] as bytes, lower-case names
    body: bytes = b""
    root_path: str = ""
    client: tuple | None = None
    server: tuple | None = None
    scheme: str = "http"
    http_version: str = "1.1"

    def scope(self) -> dict:
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": self.http_version, "method": self.method, "scheme": self.scheme,
                "path": self.path, "raw_path": self.path.encode(), "root_path": self.root_path,
                "query_string": self.query_string, "headers": list(self.headers),
                "client": self.client, "server": self.server, "state": {}}

    def receive(self):
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect is ever reported to the replica
            return {"type": "http.disconnect"}

        return receive

    def request(self) -> Request:
        """A Starlette Request, as a deployment's ``__call__`` receives it."""
        return Request(self.scope(), self.receive())


@dataclass
class ResponseData:
    """A response, whole or the start of a stream the proxy then pulls."""

    status: int
    headers: list
    body: bytes = b""
    stream_id: int | None = None
    detail: str | None = None     # an error's details, for the job's log (and debug_errors)


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    raise TypeError(f"a {type(value).__name__} cannot be returned as JSON; return a dict, "
                    "list, str, bytes or a starlette Response")


def plain_response(value: Any) -> ResponseData | None:
    """A response for a plain return value; None when it needs running as ASGI."""
    if isinstance(value, Response) and not isinstance(value, StreamingResponse):
        return ResponseData(value.status_code, list(value.raw_headers), bytes(value.body))
    if isinstance(value, (Response, StreamingResponse)) or inspect.isgenerator(value) or \
            inspect.isasyncgen(value):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        body, kind = bytes(value), b"application/octet-stream"
    elif isinstance(value, str):
        body, kind = value.encode(), b"text/plain; charset=utf-8"
    else:
        body = json.dumps(value, default=_json_default, separators=(",", ":")).encode()
        kind = b"application/json"
    length = str(len(body)).encode()
    return ResponseData(200, [(b"content-type", kind), (b"content-length", length)], body)


def as_asgi(value: Any):
    """The ASGI app that sends ``value``: a Response, or a (async) generator as a stream."""
    if isinstance(value, Response):
        return value
    return StreamingResponse(value, media_type="text/plain")


def error_response(status: int, message: str, extra: list | None = None,
                   detail: str | None = None) -> ResponseData:
    body = (message.rstrip("\n") + "\n").encode()
    return ResponseData(status, [(b"content-type", b"text/plain; charset=utf-8"),
                                 (b"content-length", str(len(body)).encode()), *(extra or [])],
                        body, detail=detail)


REQUEST_ID = b"x-request-id"
_ID_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def request_id(headers: list) -> str:
    """The client's X-Request-Id when it is short and plain, else a new random one."""
    for name, value in headers:
        if name == REQUEST_ID and 0 < len(value) <= 64 and _ID_CHARS.issuperset(value):
            return value.decode()
    return secrets.token_hex(8)


def with_request_id(headers: list, rid: str) -> list:
    """headers with X-Request-Id set to rid (the client's own dropped)."""
    return [(k, v) for k, v in headers if k != REQUEST_ID] + [(REQUEST_ID, rid.encode())]


def internal_error(rid: str, status: int = 500, what: str = "Internal Server Error",
                   detail: str | None = None) -> ResponseData:
    """What a client sees of a failure: no message, rank, host or traceback, only an id to
    find the details in the job's log."""
    return error_response(status, f"{what} (request id {rid}; the details are in the job's "
                                  "log)", detail=detail)


class Streams:
    """Responses of ASGI apps run on a replica, sent whole or pulled chunk by chunk."""

    def __init__(self):
        self.ids = itertools.count(1)
        self.open: dict[int, tuple[asyncio.Queue, asyncio.Task]] = {}

    async def run(self, app, req: RequestData) -> ResponseData:
        """Runs ``app`` on req; a body sent in several messages becomes a stream."""
        queue: asyncio.Queue = asyncio.Queue()
        started = False

        async def send(message: dict) -> None:
            nonlocal started
            started = True
            await queue.put(message)

        async def call() -> None:
            try:
                await app(req.scope(), req.receive(), send)
            except BaseException as exc:  # noqa: BLE001 - delivered to the reader
                if started and isinstance(exc, Exception):  # e.g. FastAPI answered 500 itself
                    print(f"hpcray serve: request {request_id(req.headers)} failed after its "
                          f"response started:\n{traceback.format_exc()}", file=sys.stderr,
                          flush=True)
                await queue.put({"type": "hpcray.error", "error": exc})
                return
            await queue.put({"type": "hpcray.end"})

        task = asyncio.get_running_loop().create_task(call())
        start = await queue.get()
        if start["type"] == "hpcray.error":
            raise start["error"]
        if start["type"] != "http.response.start":
            task.cancel()
            raise RuntimeError(f"the ASGI app sent {start['type']!r} before http.response.start")
        body = []
        while True:
            message = await queue.get()
            kind = message["type"]
            if kind == "hpcray.error":
                raise message["error"]
            if kind == "hpcray.end":
                break
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
            if queue.empty():  # more to come later: hand the rest over as a stream
                stream_id = next(self.ids)
                self.open[stream_id] = (queue, task)
                return ResponseData(start["status"], list(start.get("headers", [])),
                                    b"".join(body), stream_id)
        return ResponseData(start["status"], list(start.get("headers", [])), b"".join(body))

    async def next(self, stream_id: int) -> tuple[bytes, bool]:
        """The chunks that are ready (waiting for at least one); True when the stream ended."""
        entry = self.open.get(stream_id)
        if entry is None:
            raise KeyError(f"no open stream {stream_id} on this replica")
        queue, _ = entry
        chunks = []
        done = False
        while True:
            message = await queue.get()
            kind = message["type"]
            if kind == "hpcray.error":
                self.open.pop(stream_id, None)
                raise message["error"]
            if kind == "hpcray.end":
                done = True
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done = True
                break
            if queue.empty():
                break
        if done:
            self.open.pop(stream_id, None)
        return b"".join(chunks), done

    def cancel(self, stream_id: int) -> None:
        entry = self.open.pop(stream_id, None)
        if entry is not None:
            entry[1].cancel()
