"""hpcray.serve's pure parts, in-process: routing, autoscaling, batching, options, HTTP
conversion and the ingress's own answers (auth, 413, 404, built-in routes)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import pytest

pytest.importorskip("starlette")

from hpcray.serve.autoscaling import AutoscalingPolicy
from hpcray.serve.batching import batch, batch_sizes
from hpcray.serve.config import AutoscalingConfig, DeploymentConfig, HTTPOptions
from hpcray.serve.deployment import deployment
from hpcray.serve.http import RequestData, Streams, as_asgi, plain_response
from hpcray.serve.router import BackPressureError, Router


# -- routing ------------------------------------------------------------------------------------
def test_router_power_of_two_prefers_the_less_loaded():
    rng = random.Random(7)
    router = Router(max_ongoing=100, rng=rng)
    router.set_replicas(["a", "b", "c", "d"])
    router.ongoing.update({"a": 50, "b": 0, "c": 50, "d": 50})
    picks = Counter(router.choose() for _ in range(3000))
    # b is drawn in half of the pairs and always wins them; the others split the rest
    assert picks["b"] / 3000 == pytest.approx(0.5, abs=0.05)
    for r in "acd":
        assert picks[r] / 3000 == pytest.approx(0.5 / 3, abs=0.05)


def test_router_bounds_ongoing_then_queues_then_refuses():
    router = Router(max_ongoing=2, max_queued=3, rng=random.Random(1))
    router.set_replicas(["r1", "r2"])
    assigned = [router.acquire(i) for i in range(4)]
    assert sorted(assigned) == ["r1", "r1", "r2", "r2"]
    assert [router.acquire(i) for i in range(4, 7)] == [None, None, None]
    with pytest.raises(BackPressureError, match="max_queued_requests=3"):
        router.acquire(7)
    assert router.num_ongoing == 4 and router.num_queued == 3
    router.release("r2")
    ready = router.take_ready()
    assert ready == [(4, "r2")]          # first queued goes first, to the freed replica
    router.release("r1")
    router.release("r1")
    assert [item for item, _ in router.take_ready()] == [5, 6]
    assert router.num_queued == 0 and router.num_ongoing == 4


def test_router_random_load_never_exceeds_limits():
    rng = random.Random(3)
    router = Router(max_ongoing=3, max_queued=5, rng=rng)
    router.set_replicas(["a", "b", "c"])
    live: list[str] = []
    for step in range(5000):
        if live and rng.random() < 0.5:
            router.release(live.pop(rng.randrange(len(live))))
            live.extend(r for _, r in router.take_ready())
        else:
            try:
                r = router.acquire(step)
            except BackPressureError:
                assert router.num_queued == 5
                continue
            if r is not None:
                live.append(r)
        assert all(n <= 3 for n in router.ongoing.values())
        assert sum(router.ongoing.values()) == len(live)
        assert router.num_queued <= 5
        assert not router.queue or min(router.ongoing.values()) == 3


def test_router_keeps_counts_across_replica_changes():
    router = Router(max_ongoing=5)
    router.set_replicas(["a", "b"])
    router.acquire(1)
    router.acquire(2)
    router.set_replicas(["a", "c"])
    assert router.ongoing["c"] == 0 and sum(router.ongoing.values()) <= 2
    router.remove("a")
    assert list(router.ongoing) == ["c"]
    router.set_replicas([])
    assert router.acquire(3) is None and router.num_queued == 1  # waits for replicas


# -- autoscaling ---------------------------------------------------------------------------------
def test_autoscaling_waits_for_the_delays():
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=2,
                            upscale_delay_s=1.0, downscale_delay_s=5.0)
    policy = AutoscalingPolicy(cfg)
    assert policy.desired(0) == 1 and policy.desired(7) == 4 and policy.desired(100) == 4
    assert policy.decide(1, 7, now=0.0) == 1      # wants 4, not for long enough
    assert policy.decide(1, 7, now=0.5) == 1
    assert policy.decide(1, 7, now=1.0) == 4
    assert policy.decide(4, 0, now=2.0) == 4      # wants 1
    assert policy.decide(4, 8, now=3.0) == 4      # load back: the downscale clock resets
    assert policy.decide(4, 1, now=4.0) == 4
    assert policy.decide(4, 1, now=8.9) == 4
    assert policy.decide(4, 1, now=9.0) == 1


def test_autoscaling_config_errors_name_the_key():
    with pytest.raises(ValueError, match="min_replicas .* above max_replicas"):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="target_ongoing_requests must be > 0"):
        AutoscalingConfig(target_ongoing_requests=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_replica'\]"):
        AutoscalingConfig.parse({"max_replica": 3})
    assert AutoscalingConfig.parse({"min_replicas": 0, "max_replicas": 2}).start_replicas == 1


def test_deployment_options_are_checked():
    with pytest.raises(TypeError, match="unknown option"):
        deployment(num_replica=2)
    with pytest.raises(ValueError, match="max_ongoing_requests must be >= 1"):
        deployment(max_ongoing_requests=0)
    with pytest.raises(ValueError, match="num_replicas must be an int"):
        deployment(num_replicas=1.5)
    with pytest.raises(ValueError, match="ray_actor_options has unsupported"):
        DeploymentConfig(ray_actor_options={"num_cpu": 1})

    @deployment(num_replicas=2, max_ongoing_requests=7)
    class Model:
        def __call__(self, request):
            return "ok"

    assert Model.name == "Model" and Model.config.num_replicas == 2
    more = Model.options(num_replicas=3, name="Other")
    assert (more.name, more.config.num_replicas, more.config.max_ongoing_requests) == (
        "Other", 3, 7)
    auto = Model.options(autoscaling_config={"min_replicas": 2, "max_replicas": 5})
    assert auto.config.initial_replicas == 2
    with pytest.raises(TypeError, match="cannot be called directly"):
        Model()

    @deployment
    def fn(request):
        return "ok"

    with pytest.raises(TypeError, match="is a function: bind"):
        fn.bind(1)


def test_http_options():
    assert HTTPOptions().loopback and not HTTPOptions(host="0.0.0.0").loopback
    with pytest.raises(ValueError, match="at least 16"):
        HTTPOptions(token="short")
    with pytest.raises(ValueError, match="port must be at most"):
        HTTPOptions(port=70000)


# -- batching ------------------------------------------------------------------------------------
def test_batch_gathers_concurrent_calls_and_keeps_order():
    class Model:
        @batch(max_batch_size=8, batch_wait_timeout_s=0.05)
        async def square(self, xs):
            return [(x * x, len(xs)) for x in xs]

    async def main():
        m = Model()
        values = random.Random(5).sample(range(1000), 20)
        out = await asyncio.gather(*[m.square(v) for v in values])
        return values, out, batch_sizes(m, "square")

    values, out, sizes = asyncio.run(main())
    assert [r[0] for r in out] == [v * v for v in values]
    assert sum(sizes) == 20 and max(sizes) == 8 and all(1 <= s <= 8 for s in sizes)


def test_batch_errors_reach_every_caller():
    @batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def wrong(xs):
        return xs[:-1]

    async def main():
        return await asyncio.gather(*[wrong(i) for i in range(4)], return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, TypeError) and "one result per input" in str(e) for e in errors)
    with pytest.raises(TypeError, match="needs an async function"):
        batch(lambda xs: xs)
    with pytest.raises(ValueError, match="max_batch_size"):
        batch(max_batch_size=0)


# -- HTTP conversion -----------------------------------------------------------------------------
def test_plain_responses():
    import numpy as np

    r = plain_response({"a": np.arange(3), "b": np.float32(1.5)})
    assert r.status == 200 and json.loads(r.body) == {"a": [0, 1, 2], "b": 1.5}
    assert dict(r.headers)[b"content-type"] == b"application/json"
    assert plain_response("hé").body == "hé".encode()
    assert dict(plain_response(b"\x00\x01").headers)[b"content-type"] == \
        b"application/octet-stream"
    with pytest.raises(TypeError, match="cannot be returned as JSON"):
        plain_response({"x": object()})

    def gen():
        yield "a"

    assert plain_response(gen()) is None


def test_request_rebuilt_for_starlette():
    req = RequestData("POST", "/api/items", b"x=1&y=two", [(b"content-type", b"application/json")],
                      b'{"k": [1, 2]}', root_path="/api")

    async def main():
        request = req.request()
        return (request.method, request.url.path, dict(request.query_params),
                await request.json())

    assert asyncio.run(main()) == ("POST", "/api/items", {"x": "1", "y": "two"}, {"k": [1, 2]})


def test_streams_send_whole_or_chunked():
    async def main():
        streams = Streams()
        req = RequestData("GET", "/")
        whole = await streams.run(as_asgi(_response(b"done")), req)

        async def slow():
            for i in range(5):
                await asyncio.sleep(0.01)
                yield f"chunk{i};"

        first = await streams.run(as_asgi(slow()), req)
        body, done = first.body, False
        while not done:
            chunk, done = await streams.next(first.stream_id)
            body += chunk
        return whole, first, body, streams.open

    whole, first, body, left = asyncio.run(main())
    assert whole.stream_id is None and whole.body == b"done"
    assert first.stream_id is not None and first.status == 200
    assert body == b"".join(f"chunk{i};".encode() for i in range(5)) and not left


def _response(body: bytes):
    from starlette.responses import Response

    return Response(body, media_type="text/plain")


# -- the ingress's own answers -------------------------------------------------------------------
def _asgi_call(app, method="GET", path="/", headers=(), body=b"", chunks=None):
    sent = []
    parts = chunks or [body]

    async def receive():
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers),
             "query_string": b""}
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    return status, dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def _ingress(**options):
    from hpcray.serve.proxy import Ingress

    status = {"app": {"deployments": {"D": {"queued": 2, "ongoing": 3,
                                             "replica_states": {"RUNNING": 2}}}}}
    return Ingress(HTTPOptions(**options), lambda: {"/api": ("app", "D")}, lambda: status)


def test_ingress_token_is_checked_on_every_request():
    token = "t" * 20
    app = _ingress(host="0.0.0.0", token=token)
    for path in ("/-/healthz", "/api/x", "/-/metrics"):
        status, headers, _ = _asgi_call(app, path=path)
        assert status == 401 and headers[b"www-authenticate"] == b"Bearer"
        assert _asgi_call(app, path=path, headers=[(b"authorization", b"Bearer wrong")])[0] == 401
    status, _, body = _asgi_call(app, path="/-/healthz",
                                 headers=[(b"authorization", f"Bearer {token}".encode())])
    assert (status, body) == (200, b"success")


def test_ingress_limits_bodies_and_routes():
    app = _ingress(max_body_bytes=100)
    status, _, body = _asgi_call(app, "POST", "/api/x", [(b"content-length", b"101")], b"x" * 101)
    assert status == 413 and b"limit is 100 bytes" in body
    # no Content-Length: counted as it streams in
    assert _asgi_call(app, "POST", "/api/x", chunks=[b"x" * 60, b"x" * 60])[0] == 413
    status, _, body = _asgi_call(app, path="/nothing")
    assert status == 404 and b"/api" in body
    assert json.loads(_asgi_call(app, path="/-/routes")[2]) == {"/api": "app"}
    metrics = _asgi_call(app, path="/-/metrics")[2].decode()
    assert 'hpcray_serve_queued_requests{application="app",deployment="D"} 2.0' in metrics
    assert 'hpcray_serve_replicas{application="app",deployment="D",state="RUNNING"} 2.0' in metrics


def test_ingress_prefix_match_is_by_path_segment():
    from hpcray.serve.proxy import Ingress

    app = Ingress(HTTPOptions(), lambda: {"/": ("root", "R"), "/api": ("api", "A"),
                                          "/api/v2": ("v2", "B")}, dict)
    assert app.match("/api")[1] == "api" and app.match("/api/x")[1] == "api"
    assert app.match("/apix")[1] == "root" and app.match("/api/v2/y")[1] == "v2"
    assert app.match("/")[1] == "root"


def test_fastapi_routes_on_methods_are_bound_to_the_instance():
    fastapi = pytest.importorskip("fastapi")
    from hpcray.serve.ingress import asgi_app_of, bind_routes, ingress

    api = fastapi.FastAPI()

    @ingress(api)
    class Counter:
        def __init__(self, start):
            self.n = start

        @api.get("/add/{k}")
        def add(self, k: int):
            self.n += k
            return {"n": self.n}

    @api.get("/free")
    def free():
        return "plain"

    a, b = Counter(10), Counter(100)
    app_a, app_b = bind_routes(asgi_app_of(Counter), a), bind_routes(asgi_app_of(Counter), b)
    assert json.loads(_asgi_call(app_a, path="/add/5")[2]) == {"n": 15}
    assert json.loads(_asgi_call(app_b, path="/add/1")[2]) == {"n": 101}
    assert json.loads(_asgi_call(app_a, path="/free")[2]) == "plain"
    assert _asgi_call(app_a, path="/add/notanint")[0] == 422
    with pytest.raises(TypeError, match="decorates a class"):
        ingress(api)(lambda: None)


# -- hardening: queue bounds, request ids, tokens, connection guards, health --------------------
def test_default_queue_is_bounded_for_http_only():
    from hpcray.serve.router import HTTP_QUEUE_FACTOR, HTTP_QUEUE_MIN, queue_limit

    rng = random.Random(5)
    for _ in range(200):
        ongoing, replicas = rng.randint(1, 50), rng.randint(0, 8)
        want = max(HTTP_QUEUE_MIN, HTTP_QUEUE_FACTOR * ongoing * replicas)
        assert queue_limit(None, ongoing, replicas, http=True) == want
        assert queue_limit(None, ongoing, replicas, http=False) == -1
        explicit = rng.randint(-1, 100)
        assert queue_limit(explicit, ongoing, replicas, http=True) == explicit
    router = Router(max_ongoing=2, max_queued=None, rng=random.Random(1))
    router.set_replicas(["r1", "r2"])
    limit = queue_limit(None, 2, 2, http=True)
    for i in range(4 + limit):
        router.acquire(i, http=True)
    with pytest.raises(BackPressureError, match="for HTTP"):
        router.acquire("one more", http=True)
    for i in range(1000):  # handle calls: no bound, as in Ray
        router.acquire(("handle", i))
    assert router.num_queued == limit + 1000
    assert DeploymentConfig().max_queued_requests is None
    with pytest.raises(ValueError, match="max_queued_requests"):
        DeploymentConfig(max_queued_requests=-2)


def test_request_ids_are_kept_when_plain_and_replaced_otherwise():
    from hpcray.serve.http import REQUEST_ID, internal_error, request_id, with_request_id

    assert request_id([(REQUEST_ID, b"abc-123_x.y")]) == "abc-123_x.y"
    for bad in (b"", b"a" * 65, b"a b", b"<script>", "é".encode()):
        rid = request_id([(REQUEST_ID, bad)])
        assert rid != bad.decode(errors="replace") and len(rid) == 16
    assert request_id([]) != request_id([])
    headers = with_request_id([(b"a", b"1"), (REQUEST_ID, b"old")], "new")
    assert headers == [(b"a", b"1"), (REQUEST_ID, b"new")]
    response = internal_error("r1", detail="ValueError: secret\nTraceback ...")
    assert response.status == 500 and b"r1" in response.body and b"secret" not in response.body


def test_token_is_required_by_default_on_every_address():
    from hpcray.serve.api import _options

    options, generated = _options(None, {})
    assert options.loopback and generated and len(options.token) >= 16
    options, generated = _options(None, {"token": "t" * 20})
    assert options.token == "t" * 20 and not generated
    options, _ = _options(None, {"require_token": False})
    assert options.token is None                       # the old open loopback, on request
    options, generated = _options(None, {"require_token": False, "host": "0.0.0.0"})
    assert options.token and generated                 # beyond loopback: never without
    with pytest.raises(TypeError, match="unknown HTTP option"):
        _options(None, {"require_tokens": False})
    with pytest.raises(TypeError, match="require_token"):
        HTTPOptions(require_token="no")


def test_ingress_refuses_large_heads_and_echoes_request_ids():
    app = _ingress(max_header_bytes=2048)
    status, headers, _ = _asgi_call(app, path="/api/x", headers=[(b"x-big", b"a" * 3000)])
    assert status == 431 and headers[b"connection"] == b"close"
    status, headers, _ = _asgi_call(app, path="/-/routes", headers=[(b"x-request-id", b"me")])
    assert status == 200 and headers[b"x-request-id"] == b"me"


def _serve_in_thread(**options):
    from hpcray.serve.proxy import HTTPServer, Ingress

    opts = HTTPOptions(host="127.0.0.1", port=0, require_token=False, **options)
    return HTTPServer(opts, Ingress(opts, dict, dict))


def _closed(sock, timeout=30) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_connection_guard_evicts_idle_and_times_out_incomplete_requests():
    import socket
    import urllib.request

    server = _serve_in_thread(max_connections=4, incomplete_request_timeout_s=1.0)
    socks = []
    try:
        for _ in range(4):  # the limit, each with an unfinished request
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /-/routes HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        url = f"http://127.0.0.1:{server.port}/-/routes"
        with urllib.request.urlopen(url, timeout=30) as r:   # evicts the longest-waiting one
            assert r.status == 200 and json.loads(r.read()) == {}
        assert all(_closed(s) for s in socks)                # the rest: after the timeout
        s = socket.create_connection(("127.0.0.1", server.port))
        socks.append(s)
        s.sendall(b"GET /-/routes HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100_000)
        assert _closed(s)                                    # an endless head is cut off
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_health_reflects_the_controller_loop():
    from hpcray.serve.controller import Controller, HeadProbe

    controller = Controller(tick_s=0.01)
    probe = HeadProbe(controller, timeout_s=5.0)
    controller.last_tick -= 60
    assert "has not run for" in asyncio.run(probe())
    controller.shutdown()
    assert "thread ended" in asyncio.run(probe())
