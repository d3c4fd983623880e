"""hpcray.serve in real MPI jobs, over real HTTP on loopback: composition, batching,
streaming, FastAPI, backpressure, limits, tokens, autoscaling, a replica killed under load,
and the ``hpcray serve`` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, kill_all, run_process
from test_core import PRELUDE, run
from test_slurm import _processes, jobs, slurm_env  # noqa: F401 - fixtures

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

CLIENT = '''
import asyncio
import urllib.error
import urllib.request

from hpcray import serve


def auth(headers=None, token=True):
    """headers, with the ingress's bearer token unless token=False or one is given."""
    headers = dict(headers or {})
    if token and serve.http_token() and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {serve.http_token()}"
    return headers


def http(method, url, body=None, headers=None, timeout=30, token=True):
    req = urllib.request.Request(url, data=body, method=method, headers=auth(headers, token))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


async def _one(port, path, method="GET", body=b"", headers=None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"{method} {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}",
            "Connection: close"] + [f"{k}: {v}" for k, v in auth(headers).items()]
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
        ctx = serve.get_replica_context()
        assert ctx.rank == hpcray.get_runtime_context().get_rank()
        return [ctx.rank, ctx.app_name, ctx.deployment, ctx.replica_tag]


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
seen = [pre.where.remote().result() for _ in range(40)]
R["pre_ranks"] = sorted({w[0] for w in seen})
R["context"] = sorted({tuple(w[1:]) for w in seen})
R["no_context"] = outcome(serve.get_replica_context)[0]
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

# -- user_config reaches reconfigure(); handles by app name; function deployments -----------------
@serve.deployment(user_config={"threshold": 3}, ray_actor_options={"num_cpus": 0})
class Configured:
    def reconfigure(self, config):
        self.threshold = config["threshold"]

    def __call__(self, x):
        return x > self.threshold

    async def text(self, kind):
        await asyncio.sleep(0.5)
        return "slow"


serve.run(Configured.bind(), name="configured", route_prefix=None)
app_handle = serve.get_app_handle("configured")
R["configured"] = [app_handle.remote(2).result(timeout_s=30),
                   app_handle.remote(4).result(timeout_s=30)]
R["echo_handle"] = outcome(lambda: serve.get_app_handle("nope"))[0]
slow = app_handle.text.remote("x")
R["timeout"] = outcome(lambda: slow.result(timeout_s=0.05))[:2] + [slow.result(timeout_s=30)]
serve.delete("configured")

# -- errors a user can make ------------------------------------------------------------------------
R["too_many"] = outcome(lambda: serve.run(echo.options(num_replicas=50).bind(), name="big",
                                          route_prefix="/big"))
R["prefix_taken"] = outcome(lambda: serve.run(echo.bind(), name="other", route_prefix="/echo"))
R["not_bound"] = outcome(lambda: serve.run(echo, name="x"))


gpu_echo = echo.options(ray_actor_options={"num_gpus": 1, "num_cpus": 0})
R["no_gpu"] = outcome(lambda: serve.run(gpu_echo.bind(),
                                        name="gpu", route_prefix="/gpu"))
R["no_gpu_route"] = http("GET", base + "/gpu")[0]
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
    r, _ = run(run_job, FEATURES_JOB, n=4, timeout=240)
    assert r["http"] == [200, "application/json", True]
    assert r["handle"] is True
    assert max(r["batches"]) > 1 and max(r["batches"]) <= 8, r["batches"]
    assert len(r["pre_ranks"]) == 2, r["pre_ranks"]          # both replicas took calls
    assert r["context"] == [["calc", "Preprocess", "Preprocess#1"],
                            ["calc", "Preprocess", "Preprocess#2"]]
    assert r["no_context"] == "err"
    kind, text = r["method_missing"][1:]
    assert "AttributeError" in kind and "no method 'nope'" in text
    assert r["stream"] == [200, "chunked", True]
    status, text = r["fail"]
    # the client sees a request id only; the replica's log has the error
    assert status == 500 and "request id" in text and "bad input" not in text, text
    assert "rank " not in text and "Traceback" not in text
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
    assert r["configured"] == [False, True] and r["echo_handle"] == "err"
    assert r["timeout"] == ["err", "TimeoutError", "slow"]
    assert r["too_many"][0] == "err" and "more ranks" in r["too_many"][2]
    assert r["prefix_taken"][0] == "err" and "already used" in r["prefix_taken"][2]
    assert r["not_bound"][0] == "err" and ".bind()" in r["not_bound"][2]
    assert r["no_gpu"][0] == "err" and "GPU" in r["no_gpu"][2] and r["no_gpu_route"] == 404
    assert r["freed"] is True
    assert r["broken"][0] == "err" and "cannot load the weights" in r["broken"][2]
    assert r["after_shutdown"] == "err"


RESILIENCE_JOB = CLIENT + '''
import threading

hpcray.init()
R = {}


@serve.deployment(num_replicas=1, max_ongoing_requests=1, max_queued_requests=2,
                  ray_actor_options={"num_cpus": 0.5})
class Slow:
    async def __call__(self, request):
        await asyncio.sleep(float(request.query_params.get("s", "0.5")))
        return "done"


serve.run(Slow.bind(), name="slow", route_prefix="/slow", port=0, max_body_bytes=1000)
port = serve.http_port()
base = f"http://127.0.0.1:{port}"
out = many(port, ["/slow?s=0.5"] * 12)
R["overload"] = sorted(r[0] for r in out)
R["retry_after"] = http("GET", base + "/slow?s=0")[0]
results = []
threads = [threading.Thread(target=lambda: results.append(http("GET", base + "/slow?s=0.5")))
           for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
R["retry_header"] = sorted({r[1].get("retry-after") for r in results if r[0] == 503})
R["big_body"] = http("POST", base + "/slow?s=0", b"x" * 1001)[0]
R["ok_body"] = http("POST", base + "/slow?s=0", b"x" * 1000)[0]
serve.delete("slow")


# -- autoscaling from load ----------------------------------------------------------------------
@serve.deployment(max_ongoing_requests=10, ray_actor_options={"num_cpus": 0.5},
                  autoscaling_config={"min_replicas": 1, "max_replicas": 3,
                                      "target_ongoing_requests": 2, "upscale_delay_s": 0.5,
                                      "downscale_delay_s": 1.0, "metrics_interval_s": 0.2})
class Elastic:
    async def __call__(self, request):
        await asyncio.sleep(0.2)
        return "ok"


serve.run(Elastic.bind(), name="elastic", route_prefix="/elastic")


def running():
    d = serve.status().applications["elastic"].deployments["Elastic"]
    return d.replica_states.get("RUNNING", 0)


R["scale_start"] = running()
stop = threading.Event()
threads = [threading.Thread(target=lambda: [http("GET", base + "/elastic")
                                            for _ in iter(stop.is_set, True)]) for _ in range(8)]
for t in threads:
    t.start()
R["scaled_up"] = poll(lambda: running() == 3, 60) and running()
stop.set()
for t in threads:
    t.join(timeout=60)
R["scaled_down"] = poll(lambda: running() == 1, 60) and running()
serve.shutdown()

# -- beyond loopback a token is required -----------------------------------------------------------
os.environ["HPCRAY_SERVE_TOKEN"] = "secret-token-0123456789"
serve.run(Elastic.options(autoscaling_config=None, num_replicas=1).bind(), name="tok",
          route_prefix="/", host="0.0.0.0", port=0)
tport = serve.http_port()
url = f"http://127.0.0.1:{tport}/"
R["token"] = [http("GET", url, token=False)[0],
              http("GET", url, headers={"Authorization": "Bearer nope"})[0],
              http("GET", url, headers={"Authorization": "Bearer secret-token-0123456789"})[0],
              http("GET", f"http://127.0.0.1:{tport}/-/metrics", token=False)[0]]
serve.shutdown()
del os.environ["HPCRAY_SERVE_TOKEN"]
serve.start(host="0.0.0.0", port=0)   # no token given: one is generated and printed
gport = serve.http_port()
R["generated"] = [http("GET", f"http://127.0.0.1:{gport}/-/healthz", token=False)[0],
                  http("GET", f"http://127.0.0.1:{gport}/-/healthz")[0]]
serve.shutdown()
emit(R)
'''


def test_serve_resilience(run_job) -> None:
    r, proc = run(run_job, RESILIENCE_JOB, n=4, timeout=300)
    # one running, two queued; the rest are told to come back later
    assert r["overload"].count(200) >= 3 and set(r["overload"]) == {200, 503}, r["overload"]
    assert r["retry_after"] == 200 and r["retry_header"] == ["1"]
    assert r["big_body"] == 413 and r["ok_body"] == 200
    assert r["scale_start"] == 1 and r["scaled_up"] == 3 and r["scaled_down"] == 1
    assert "autoscaling Elastic from 1 to" in proc.stderr
    assert r["token"] == [401, 401, 200, 401]
    assert r["generated"] == [401, 200]
    assert "must send 'Authorization: Bearer " in proc.stderr


KILL_JOB = CLIENT + '''
import contextlib
import threading
import uuid

hpcray.init()
R = {}
base = None


# -- a replica killed under load ---------------------------------------------------------------
@serve.deployment(num_replicas=2, max_ongoing_requests=8, health_check_period_s=0.2,
                  health_check_timeout_s=5)
class Victim:
    def __init__(self):
        self.sick = False
        self.uid = uuid.uuid4().hex

    async def __call__(self, request):
        await asyncio.sleep(0.01)
        return {"pid": os.getpid()}

    def pid(self):
        return os.getpid()

    def crash(self):
        os._exit(3)

    def make_sick(self):
        self.sick = True
        return self.uid

    def ident(self):
        # the replacement may land in the same rank's process: tell instances apart
        return self.uid

    def check_health(self):
        if self.sick:
            raise RuntimeError("sick on purpose")


h = serve.run(Victim.bind(), name="victim", route_prefix="/victim", port=0)
base = f"http://127.0.0.1:{serve.http_port()}"
pids = set()
while len(pids) < 2:
    pids.add(h.pid.remote().result(timeout_s=30))
stop = threading.Event()
codes = {}
lock = threading.Lock()


def load():
    while not stop.is_set():
        status = http("GET", base + "/victim", timeout=60)[0]
        with lock:
            codes[status] = codes.get(status, 0) + 1


workers = [threading.Thread(target=load) for _ in range(6)]
for t in workers:
    t.start()
time.sleep(1.0)
if sys.argv[1] == "sigkill":
    os.kill(sorted(pids)[-1], 9)
else:
    h.crash.remote()


def pids_now():
    """Replica pids answering 20 calls; calls caught on a dying replica raise ActorDiedError."""
    out = set()
    for _ in range(20):
        try:
            out.add(h.pid.remote().result(timeout_s=30))
        except hpcray.exceptions.ActorDiedError:
            pass
    return out


def running_victims():
    return serve.status().applications["victim"].deployments["Victim"].replica_states.get(
        "RUNNING")


replaced = poll(lambda: len(pids_now() - pids) >= 1 and running_victims() == 2, 60)
time.sleep(1.0)
stop.set()
for t in workers:
    t.join(timeout=60)
R["killed"] = {"codes": {str(k): v for k, v in codes.items()}, "replaced": bool(replaced),
               "hung": sum(t.is_alive() for t in workers)}
after = [http("GET", base + "/victim")[0] for _ in range(20)]
R["after_kill"] = sorted(set(after))

# -- a replica failing its health check is replaced ------------------------------------------------
sick = h.make_sick.remote().result(timeout_s=30)


def idents_now():
    out = set()
    for _ in range(20):
        with contextlib.suppress(hpcray.exceptions.ActorDiedError):
            out.add(h.ident.remote().result(timeout_s=30))
    return out


R["sick_replaced"] = bool(poll(lambda: sick not in idents_now() and len(idents_now()) == 2, 60))
if not R["sick_replaced"]:
    R["status"] = str(serve.status())
serve.delete("victim")


serve.shutdown()
emit(R)
'''


def _check_kill(proc: subprocess.CompletedProcess) -> None:
    # the replica's executor process died, not its rank: the job ends well
    detail = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0 and "died during the job" not in proc.stderr, detail
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, detail
    r = json.loads(lines[0][len("RESULT "):])
    killed = r["killed"]
    assert killed["hung"] == 0 and killed["replaced"] is True, killed
    # GETs on the dead replica are retried once, so clients mostly never notice
    assert set(killed["codes"]) <= {"200", "500"} and killed["codes"]["200"] > 0, killed
    assert r["after_kill"] == [200]
    assert r["sick_replaced"] is True, r
    assert "died; replacing it" in proc.stderr
    assert "health check failed" in proc.stderr and "sick on purpose" in proc.stderr


def test_replica_crash_under_load(run_job) -> None:
    """A replica's process exits mid-load: it is replaced, the job goes on and ends well."""
    _check_kill(run_job(PRELUDE + KILL_JOB, n=4, timeout=240, args=["exit"]))


def test_replica_sigkill_under_load_on_slurm(jobs) -> None:  # noqa: F811 - the fixture
    """A replica's process SIGKILLed on n2 in an srun step: it is replaced."""
    script = jobs.script(PRELUDE + KILL_JOB)
    proc = jobs.srun("-N", "2", "--ntasks-per-node=2", "--mpi=pmi2", sys.executable,
                     str(script), "sigkill", timeout=240)
    _check_kill(proc)


APP_MODULE = '''
from hpcray import serve


@serve.deployment(num_replicas=2)
class Hello:
    def __init__(self, who):
        self.who = who

    def __call__(self, request):
        return {"hello": self.who, "path": request.url.path}


app = Hello.bind("hpc")
'''


def test_cli_serves_until_terminated(tmp_path) -> None:
    import re
    import urllib.request

    import psutil

    (tmp_path / "hello_app.py").write_text(APP_MODULE)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "hpcray", "serve", "-n", "3", "--port", "0",
                             "--route-prefix", "/hi", "hello_app:app"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    family: list = []
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"ready at (http://\S+)", line)
            url = found.group(1) if found else None
        family = psutil.Process(proc.pid).children(recursive=True)
        assert url, "".join(lines)
        token = re.search(r"Authorization: Bearer (\S+)'", "".join(lines)).group(1)
        req = urllib.request.Request(url + "/x", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.loads(r.read())
        assert body == {"hello": "hpc", "path": "/hi/x"}
        ranks = [p for p in family if p.name().startswith("python")
                 and "hpcray.serve" in " ".join(p.cmdline())]  # not forkservers, executors
        assert len(ranks) == 3
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        lines.append(out)
        assert "shutting down" in out, "".join(lines)
        _, alive = psutil.wait_procs(family, timeout=20)
        assert not alive, "".join(lines)
    finally:
        kill_all(family)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_errors_are_clear(tmp_path) -> None:
    (tmp_path / "not_app.py").write_text("app = 42\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for target, text in [("not_app:app", "not an Application"), ("nomodule:app", "cannot import"),
                         ("not_app:missing", "no attribute 'missing'"),
                         ("justaname", "expected module:attribute")]:
        proc = run_process([sys.executable, "-m", "hpcray.serve", target], 60, env=env,
                           cwd=str(tmp_path))
        assert proc.returncode != 0 and text in proc.stderr, (target, proc.stderr)


@pytest.mark.parametrize("name, pattern", [
    ("serve_batch_model.py", r"accuracy 0\.(8|9)\d+, batch sizes seen \[.*\d\d.*\]"),
    ("serve_composition.py", r"\[10, 12, 14\] -> \{'score': 0\.86\d+"),
    ("serve_cupy_model.py", r"skipped|'device': \d"),
])
def test_examples(name: str, pattern: str) -> None:
    import re

    proc = run_process([sys.executable, str(ROOT / "examples" / name)], 180, cwd=str(ROOT))
    assert proc.returncode == 0 and re.search(pattern, proc.stdout), proc.stdout + proc.stderr


def test_serve_template_on_slurm(jobs) -> None:  # noqa: F811 - the fixture
    """slurm/serve.sbatch: the output names address and token; the token is enforced;
    scancel ends every rank."""
    import re
    import urllib.error
    import urllib.request

    module = jobs.name.replace("-", "_")  # unique: its processes are found by this name
    (jobs.workdir / f"{module}.py").write_text(APP_MODULE)
    output = jobs.workdir / "serve.out"
    job_id = jobs.sbatch(f"--output={output}", str(ROOT / "slurm" / "serve.sbatch"),
                         f"{module}:app", "--port", "0", "--route-prefix", "/hi")
    text = jobs.wait_output(output, r"ready at http://\S+", timeout=120)
    url = re.search(r"ready at (http://\S+)", text).group(1)
    token = re.search(r"Authorization: Bearer (\S+)'", text).group(1)
    host_url = re.sub(r"http://[^:/]+", "http://127.0.0.1", url)   # the node is this machine
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(host_url + "/x", timeout=30)
    assert refused.value.code == 401
    req = urllib.request.Request(host_url + "/x", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.loads(r.read()) == {"hello": "hpc", "path": "/hi/x"}
    subprocess.run(["scancel", job_id], env=jobs.env, timeout=30, check=True)
    jobs.wait_done(job_id, output=output)
    deadline = time.monotonic() + 20
    while _processes(module) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes(module), output.read_text()
