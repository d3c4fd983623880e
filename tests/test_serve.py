"""hpcray.serve in real MPI jobs, over real HTTP on loopback: composition, batching,
streaming, FastAPI, backpressure, limits, tokens, autoscaling, a replica killed under load,
and the ``hpcray serve`` CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from test_core import PRELUDE, run

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

CLIENT = '''
import asyncio
import urllib.error
import urllib.request

from hpcray import serve


def http(method, url, body=None, headers=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def _one(port, path, method="GET", body=b"", headers=None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"{method} {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}",
            "Connection: close"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\\r\\n".join(head) + "\\r\\n\\r\\n").encode() + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\\r\\n\\r\\n", 1)[1]


def many(port, paths, method="GET", body=b"", timeout=120):
    """Sends every request at once (one connection each); [(status, body)] in order."""
    async def main():
        return await asyncio.wait_for(asyncio.gather(
            *[_one(port, p, method, body) for p in paths], return_exceptions=True), timeout)
    return asyncio.run(main())
'''

FEATURES_JOB = CLIENT + '''
import numpy as np

hpcray.init()
R = {}


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5})
class Preprocess:
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, xs):
        return [x * self.scale for x in xs]

    def where(self):
        return hpcray.get_runtime_context().get_rank()


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Model:
    def __init__(self, weights):
        self.w = np.asarray(weights)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def predict(self, rows):
        out = np.asarray(rows) @ self.w
        return [[float(v), len(rows)] for v in out]


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Ingress:
    def __init__(self, pre, model):
        self.pre, self.model = pre, model

    async def __call__(self, request):
        if request.url.path.endswith("/stream"):
            n = int(request.query_params["n"])
            def gen():
                for i in range(n):
                    yield f"line {i}\\n"
            return gen()
        if request.url.path.endswith("/fail"):
            raise ValueError("bad input here")
        body = await request.json()
        scaled = await self.pre.remote(body["x"])
        value, batch = await self.model.predict.remote(scaled)
        return {"y": value, "batch": batch}

    async def chained(self, x):
        # a response handed on unresolved: the runtime resolves it on the replica
        return await self.model.predict.remote(self.pre.remote(x))


rng = np.random.default_rng(0)
w = rng.standard_normal(4)
h = serve.run(Ingress.bind(Preprocess.bind(3.0), Model.bind(w.tolist())), name="calc",
              route_prefix="/calc", port=0)
port = serve.http_port()
base = f"http://127.0.0.1:{port}"

xs = rng.standard_normal((40, 4))
want = (3.0 * xs) @ w
st, hd, body = http("POST", base + "/calc", json.dumps({"x": xs[0].tolist()}).encode(),
                    {"Content-Type": "application/json"})
R["http"] = [st, hd.get("content-type"), bool(abs(json.loads(body)["y"] - want[0]) < 1e-9)]
responses = [h.chained.remote(x.tolist()) for x in xs]
vals = [r.result(timeout_s=60) for r in responses]
R["handle"] = bool(np.allclose([v[0] for v in vals], want))
R["batches"] = sorted({v[1] for v in vals})
pre = serve.get_deployment_handle("Preprocess", "calc")
R["pre_ranks"] = sorted({pre.where.remote().result() for _ in range(40)})
R["method_missing"] = outcome(lambda: pre.nope.remote().result(timeout_s=30))

st, hd, body = http("GET", base + "/calc/stream?n=200")
R["stream"] = [st, hd.get("transfer-encoding"), body == "".join(f"line {i}\\n" for i in
                                                               range(200)).encode()]
st, _, body = http("GET", base + "/calc/fail")
R["fail"] = [st, body.decode()]
R["404"] = http("GET", base + "/other")[0]
R["health"] = (lambda r: [r[0], r[2].decode()])(http("GET", base + "/-/healthz"))
R["routes"] = json.loads(http("GET", base + "/-/routes")[2])

# -- FastAPI ingress, methods as routes ----------------------------------------------------------
try:
    from fastapi import FastAPI
except ImportError:
    R["fastapi"] = "absent"
else:
    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    @serve.ingress(api)
    class Counter:
        def __init__(self):
            self.n = 0

        @api.post("/add/{k}")
        def add(self, k: int):
            self.n += k
            return {"n": self.n}

        @api.get("/n")
        def get(self):
            return self.n

    serve.run(Counter.bind(), name="counter", route_prefix="/counter")
    R["fastapi"] = [json.loads(http("POST", base + "/counter/add/5")[2]),
                    json.loads(http("POST", base + "/counter/add/2")[2]),
                    json.loads(http("GET", base + "/counter/n")[2]),
                    http("POST", base + "/counter/add/x")[0]]
    serve.delete("counter")
    R["deleted"] = http("GET", base + "/counter/n")[0]

# -- 1,000 concurrent requests: every one answered 200 or 503 ----------------------------------
@serve.deployment(num_replicas=2, max_ongoing_requests=20, max_queued_requests=200,
                  ray_actor_options={"num_cpus": 0.5})
async def echo(request):
    return {"path": request.url.path}

serve.run(echo.bind(), name="echo", route_prefix="/echo")
results = many(port, [f"/echo/{i}" for i in range(1000)])
codes = {}
for r in results:
    key = type(r).__name__ if isinstance(r, Exception) else r[0]
    codes[str(key)] = codes.get(str(key), 0) + 1
R["thousand"] = codes
R["thousand_bodies"] = all(json.loads(r[1]) == {"path": f"/echo/{i}"}
                           for i, r in enumerate(results) if not isinstance(r, Exception)
                           and r[0] == 200)
s = serve.status().applications["echo"].deployments["echo"]
R["after_load"] = poll(lambda: (lambda d: d.ongoing == 0 and d.queued == 0)(
    serve.status().applications["echo"].deployments["echo"]), 30)
metrics = http("GET", base + "/-/metrics")[2].decode()
R["metrics"] = [line for line in metrics.splitlines()
                if line.startswith("hpcray_serve_requests_total") and 'deployment="echo"' in line]
R["status_table"] = str(serve.status())

# -- errors a user can make ------------------------------------------------------------------------
R["too_many"] = outcome(lambda: serve.run(echo.options(num_replicas=50).bind(), name="big",
                                          route_prefix="/big"))
R["prefix_taken"] = outcome(lambda: serve.run(echo.bind(), name="other", route_prefix="/echo"))
R["not_bound"] = outcome(lambda: serve.run(echo, name="x"))


serve.delete("echo")
R["freed"] = poll(lambda: hpcray.available_resources().get("CPU", 0) >= 1.0, 30)


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Broken:
    def __init__(self):
        raise RuntimeError("cannot load the weights")

R["broken"] = outcome(lambda: serve.run(Broken.bind(), name="broken", route_prefix=None))
serve.shutdown()
R["after_shutdown"] = outcome(lambda: http("GET", base + "/echo/1", timeout=5))[0]
emit(R)
'''


def test_serve_features(run_job) -> None:
    r, proc = run(run_job, FEATURES_JOB, n=4, timeout=240)
    assert r["http"] == [200, "application/json", True]
    assert r["handle"] is True
    assert max(r["batches"]) > 1 and max(r["batches"]) <= 8, r["batches"]
    assert len(r["pre_ranks"]) == 2, r["pre_ranks"]          # both replicas took calls
    kind, text = r["method_missing"][1:]
    assert "AttributeError" in kind and "no method 'nope'" in text
    assert r["stream"] == [200, "chunked", True]
    status, text = r["fail"]
    assert status == 500 and "ValueError: bad input here" in text and "rank " in text
    assert r["404"] == 404 and r["health"] == [200, "success"]
    assert r["routes"] == {"/calc": "calc", "/counter": "counter", "/echo": "echo"} or \
        r["routes"] == {"/calc": "calc"}
    if r["fastapi"] != "absent":
        assert r["fastapi"] == [{"n": 5}, {"n": 7}, 7, 422]
        assert r["deleted"] == 404
    assert set(r["thousand"]) <= {"200", "503"} and sum(r["thousand"].values()) == 1000
    assert r["thousand"].get("200", 0) > 0 and r["thousand_bodies"] is True
    assert r["after_load"] is True
    assert any('code="200"' in line for line in r["metrics"])
    assert "echo" in r["status_table"] and "HEALTHY" in r["status_table"]
    assert r["too_many"][0] == "err" and "more ranks" in r["too_many"][2]
    assert r["prefix_taken"][0] == "err" and "already used" in r["prefix_taken"][2]
    assert r["not_bound"][0] == "err" and ".bind()" in r["not_bound"][2]
    assert r["freed"] is True
    assert r["broken"][0] == "err" and "cannot load the weights" in r["broken"][2]
    assert r["after_shutdown"] == "err"
