"""Serve benchmark: a trivial JSON deployment with 2 replicas under wrk, hpcray vs Ray Serve.

    python benchmarks/serve.py                     # 3 rounds of 20 s of load on each system
    python benchmarks/serve.py --ray-python ''     # hpcray only

The parent imports neither system. It runs ``python benchmarks/serve.py --internal hpcray``
(``hpcray.init(num_cpus=2)``: the head rank with the HTTP ingress plus two worker ranks) and
``RAY_PYTHON benchmarks/serve.py --internal ray`` (``ray.init(num_cpus=2)``), each of which
deploys the same class with the same options, warms up, runs wrk (Debian's package: 2 threads,
32 connections, --latency) and reports requests/s and latency percentiles. hpcray runs in both
execution modes (``HPCRAY_EXECUTION=process``: replicas in executor processes; ``thread``: in
the ranks). Rounds rotate which system goes first; cells are medians over rounds (min..max) and
a ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
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


MODES = {"hpcray": "process", "hpcray-thread": "thread"}


def run_internal(python: str, system: str, seconds: float, connections: int) -> dict | None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get(
        "PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    if system in MODES:
        env["HPCRAY_EXECUTION"] = MODES[system]
        system = "hpcray"
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


def _cell(values: list[float]) -> str:
    if not values:
        return "failed"
    text = f"{statistics.median(values):,.1f}"
    return text + (f" ({min(values):,.1f}..{max(values):,.1f})" if len(values) > 1 else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--internal", choices=["hpcray", "ray"], help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
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
    systems = [(name, sys.executable) for name in MODES]
    if ns.ray_python and Path(ns.ray_python).exists():
        systems.append(("ray", ns.ray_python))
    rounds: list[dict] = []
    for rnd in range(ns.rounds):
        shift = rnd % len(systems)
        got = {}
        for name, python in systems[shift:] + systems[:shift]:
            print(f"round {rnd + 1}/{ns.rounds}: {name}", file=sys.stderr, flush=True)
            got[name] = run_internal(python, name, ns.seconds, ns.connections)
        rounds.append(got)
    print(f"\n{'system':<15}{'requests/s':>26}{'p50 ms':>24}{'p99 ms':>24}{'failed':>8}")
    for name, _ in systems:
        ok = [r[name] for r in rounds if r.get(name)]
        cells = [_cell([r[key] for r in ok]) for key in ("rps", "p50_ms", "p99_ms")]
        print(f"{name:<15}{cells[0]:>26}{cells[1]:>24}{cells[2]:>24}"
              f"{len(rounds) - len(ok):>8}")
    for name in MODES:
        paired = [(r[name], r["ray"]) for r in rounds if r.get(name) and r.get("ray")]
        if not paired:
            continue
        rps = statistics.median(h["rps"] / y["rps"] for h, y in paired)
        p99 = statistics.median(y["p99_ms"] / h["p99_ms"] for h, y in paired)
        print(f"\n{name}: requests/s {rps:.1f}x Ray Serve (target >= 5x): "
              f"{'PASS' if rps >= 5 else 'MISS'}; p99 1/{p99:.1f} of Ray's (target <= 1/5): "
              f"{'PASS' if p99 >= 5 else 'MISS'} (medians of {len(paired)} rounds' ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
