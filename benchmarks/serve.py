"""Serve benchmark: a trivial JSON deployment with 2 replicas under wrk, hpcray vs Ray Serve.

    python benchmarks/serve.py                     # 20 s of load on each, 32 connections
    python benchmarks/serve.py --ray-python ''     # hpcray only

The parent imports neither system. It runs ``python benchmarks/serve.py --internal hpcray``
(``hpcray.init(num_cpus=2)``: the head rank with the HTTP ingress plus two worker ranks) and
``RAY_PYTHON benchmarks/serve.py --internal ray`` (``ray.init(num_cpus=2)``), each of which
deploys the same class with the same options, warms up, runs wrk (Debian's package: 2 threads,
32 connections, --latency) and reports requests/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RAY_PYTHON = "/opt/rayvenv/bin/python"
TAG = "SERVE_BENCH "
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> dict:
    """requests/s, p50/p90/p99 in ms and error counts from ``wrk --latency`` output."""
    out: dict = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}
    percentiles = re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    for pct, value, unit in percentiles:
        out[f"p{pct}_ms"] = float(value) * UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(errors.group(1)) if errors else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(map(int, sock.groups())) if sock else 0
    out["requests"] = int(re.search(r"(\d+) requests in", text).group(1))
    return out


def wrk(url: str, seconds: float, connections: int, token: str | None = None) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{round(seconds)}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True,
                          timeout=seconds + 60).stdout
    return parse_wrk(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def internal(system: str, seconds: float, connections: int) -> None:
    if system == "hpcray":
        import hpcray as rt
        from hpcray import serve

        rt.init(num_cpus=2)
    else:
        import ray as rt
        from ray import serve

        rt.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    @serve.deployment(num_replicas=2)
    class Trivial:
        def __call__(self, request):
            return {"ok": True, "n": 1}

    port = free_port()
    if system == "hpcray":
        serve.run(Trivial.bind(), port=port)
    else:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Trivial.bind(), route_prefix="/")
    url = f"http://127.0.0.1:{port}/"
    token = serve.http_token() if system == "hpcray" else None
    wrk(url, 3, connections, token)  # warm-up
    result = wrk(url, seconds, connections, token)
    result["system"] = system
    print(TAG + json.dumps(result), flush=True)
    serve.shutdown()
    rt.shutdown()


def run_internal(python: str, system: str, seconds: float, connections: int) -> dict | None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get(
        "PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    cmd = [python, str(Path(__file__).resolve()), "--internal", system, "--seconds",
           str(seconds), "--connections", str(connections)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 300,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(TAG)]
    if proc.returncode != 0 or not lines:
        print(f"{system} run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
              f"{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len(TAG):])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--internal", choices=["hpcray", "ray"], help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON,
                   help=f"interpreter with ray[serve] (default {DEFAULT_RAY_PYTHON}; '' skips)")
    ns = p.parse_args()
    if ns.internal:
        internal(ns.internal, ns.seconds, ns.connections)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    print(f"load: wrk -t2 -c{ns.connections} -d{ns.seconds:g}s, trivial JSON deployment, "
          "2 replicas, 2 worker CPUs; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    results = {"hpcray": run_internal(sys.executable, "hpcray", ns.seconds, ns.connections)}
    if ns.ray_python and Path(ns.ray_python).exists():
        results["ray"] = run_internal(ns.ray_python, "ray", ns.seconds, ns.connections)
    print(f"\n{'system':<10}{'requests/s':>12}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
          f"{'non-2xx':>10}{'sock err':>10}")
    for name, r in results.items():
        if r is None:
            print(f"{name:<10}{'failed':>12}")
            continue
        print(f"{name:<10}{r['rps']:>12.1f}{r['p50_ms']:>10.2f}{r['p90_ms']:>10.2f}"
              f"{r['p99_ms']:>10.2f}{r['non_2xx']:>10}{r['socket_errors']:>10}")
    h, r = results.get("hpcray"), results.get("ray")
    if h and r:
        rps_ratio, p99_ratio = h["rps"] / r["rps"], r["p99_ms"] / h["p99_ms"]
        print(f"\nrequests/s: hpcray {rps_ratio:.1f}x Ray Serve (target >= 5x): "
              f"{'PASS' if rps_ratio >= 5 else 'MISS'}")
        print(f"p99 latency: hpcray's is 1/{p99_ratio:.1f} of Ray's (target <= 1/5): "
              f"{'PASS' if p99_ratio >= 5 else 'MISS'}")
        print(f"p50 latency: hpcray {h['p50_ms']:.2f} ms, Ray {r['p50_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
