"""Replica errors over HTTP (direct and through a composed deployment), with and without
debug_errors, and overload under the default queue bound. Prints ERRORS-RESULT <json>."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid

import hpcray
from hpcray import serve

hpcray.init()
SECRET = f"hunter2-{uuid.uuid4().hex}"


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Inner:
    def __call__(self, x):
        raise ValueError(f"the database password is {SECRET}")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Outer:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, request):
        if request.url.path.endswith("/direct"):
            raise RuntimeError(f"cannot open /srv/{SECRET}")
        return await self.inner.remote(1)


@serve.deployment(max_ongoing_requests=4, ray_actor_options={"num_cpus": 0.5})
class Slow:
    async def __call__(self, request):
        await asyncio.sleep(1.5)
        return "slow"

    def fast(self, i):
        return i


def http(path, headers=None):
    headers = {"Authorization": f"Bearer {serve.http_token()}", **(headers or {})}
    req = urllib.request.Request(f"http://127.0.0.1:{serve.http_port()}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return [r.status, r.headers.get("x-request-id"), r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.headers.get("x-request-id"), e.read().decode()]


async def one(path):
    reader, writer = await asyncio.open_connection("127.0.0.1", serve.http_port())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 f"Authorization: Bearer {serve.http_token()}\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1])


async def burst(path, n):
    return await asyncio.wait_for(asyncio.gather(*[one(path) for _ in range(n)]), 120)


R = {"secret": SECRET, "node": hpcray.get_runtime_context().get_node_name()}
serve.run(Outer.bind(Inner.bind()), name="app", route_prefix="/app", port=0)
R["direct"] = http("/app/direct")
R["composed"] = http("/app/composed", {"X-Request-Id": "client-id-123"})

try:
    from fastapi import FastAPI
except ImportError:
    R["fastapi"] = None
else:
    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    @serve.ingress(api)
    class Api:
        @api.get("/boom")
        def boom(self):
            raise KeyError(f"api key {SECRET}")

    serve.run(Api.bind(), name="api", route_prefix="/api")
    R["fastapi"] = http("/api/boom")
    serve.delete("api")

handle = serve.run(Slow.bind(), name="slow", route_prefix="/slow")
codes = asyncio.run(burst("/slow", 60))
R["burst"] = {str(c): codes.count(c) for c in sorted(set(codes))}
R["handle"] = [r.result(timeout_s=60) for r in [handle.fast.remote(i) for i in range(60)]]

serve.shutdown()
serve.run(Outer.bind(Inner.bind()), name="app", route_prefix="/app", port=0, debug_errors=True)
R["debug"] = http("/app/direct")
R["debug_composed"] = http("/app/composed")
serve.shutdown()
print("ERRORS-RESULT " + json.dumps(R), flush=True)
