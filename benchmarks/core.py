"""Core microbenchmarks: hpcray vs Ray, in the shapes of Ray's ``ray_perf.py``.

One invocation runs everything::

    python benchmarks/core.py          # 2 hpcray workers (3 ranks), Ray num_cpus=2
    python benchmarks/core.py --quick  # smaller counts, for a smoke test

The parent process never imports ``hpcray`` or ``ray``.  It launches

* the hpcray job: ``mpiexec -n W+1 python benchmarks/core.py --internal-run hpcray``
  (rank 0 measures, ranks 1..W become workers inside ``hpcray.init()``);
* the Ray run: ``RAY_PYTHON benchmarks/core.py --internal-run ray``;
* fresh launch-to-first-result jobs for both systems.

Each sub-run prints JSON lines ``{"system", "name", "value", "unit"}``; the parent
collects them, prints them all, then a comparison table with the targets.
Every benchmark row is one function taking the runtime module (``ray`` or
``hpcray``) as its first argument, since both expose the same API names.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import queue
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
DEFAULT_RAY_PYTHON = "/opt/rayvenv/bin/python"
MIB = 1 << 20
RESULT_TAG = "HPCRAY_BENCH_RESULT"

# Row order, unit and direction for the final table.
ROWS: list[tuple[str, str]] = [
    ("launch_to_first_result", "s"),
    ("tasks_sync", "tasks/s"),
    ("tasks_async", "tasks/s"),
    ("actor_calls_sync", "calls/s"),
    ("actor_calls_async", "calls/s"),
    ("put_small", "puts/s"),
    ("get_small", "gets/s"),
    ("arg_100mib", "GB/s"),
    ("chain_1000", "tasks/s"),
    ("rss_1mib_tasks", "tasks/s"),
    ("rss_driver_before", "MiB"),
    ("rss_driver_peak", "MiB"),
    ("rss_worker_max_before", "MiB"),
    ("rss_worker_max_peak", "MiB"),
]
THROUGHPUT_TARGET_X = 3.0
ARG_TARGET_GBPS = 4.0
LAUNCH_TARGET_S = 0.5


# --------------------------------------------------------------------------
# Remote bodies.  Plain module-level functions/classes, wrapped at run time
# with ``rt.remote`` so the same code serves both runtimes (and pickles by
# reference or by value alike).
# --------------------------------------------------------------------------


def noop() -> int:
    """Smallest possible task."""
    return 0


def nbytes(arr: np.ndarray) -> int:
    """Take a (large) array argument, return a small value."""
    return int(arr.nbytes)


def increment(x: int = 0) -> int:
    """One link of a dependency chain."""
    return x + 1


def one_mib() -> np.ndarray:
    """Return 1 MiB of touched memory."""
    return np.ones(MIB, dtype=np.uint8)


def mem_probe(reset: bool = False, sleep_s: float = 0.0) -> dict[str, Any]:
    """Report this process's host, pid, current and peak RSS (bytes).

    With ``reset`` the peak (VmHWM) is first reset to the current RSS via
    ``/proc/self/clear_refs`` (Linux >= 4.0).  ``sleep_s`` spreads a burst of
    probes over all worker processes.
    """
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
    if sleep_s:
        time.sleep(sleep_s)
    rss = hwm = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if rss is None:
        try:
            import psutil

            rss = psutil.Process().memory_info().rss
        except ImportError:
            rss = hwm
    return {"host": socket.gethostname(), "pid": os.getpid(), "rss": rss, "hwm": hwm}


class A:
    """Trivial actor."""

    def f(self, x: Any = None) -> Any:
        """Echo the argument."""
        return x


# --------------------------------------------------------------------------
# Benchmark rows, parameterized by the runtime module.
# --------------------------------------------------------------------------


@dataclass
class Config:
    """Counts for one run."""

    sync_n: int = 1000
    async_n: int = 10_000
    put_get_n: int = 10_000
    chain_n: int = 1000
    arg_mib: int = 100
    arg_reps: int = 5
    repeat: int = 3
    rss: bool = True
    rss_n: int = 10_000
    rss_window: int = 100
    workers: int = 2

    @classmethod
    def quick(cls, workers: int, rss: bool) -> Config:
        """Smaller counts for a smoke test."""
        return cls(
            sync_n=100,
            async_n=1000,
            put_get_n=1000,
            chain_n=1000,
            arg_reps=2,
            repeat=1,
            rss=rss,
            rss_n=500,
            workers=workers,
        )


Row = tuple[str, float, str, dict[str, Any]]


def _rate(fn: Callable[[], int], repeat: int) -> float:
    """Median ops/s over ``repeat`` runs of ``fn`` (which returns its op count)."""
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_tasks_sync(rt: ModuleType, cfg: Config) -> float:
    """``get(f.remote())`` in a loop."""
    f = rt.remote(noop)
    rt.get([f.remote() for _ in range(10)])

    def run() -> int:
        for _ in range(cfg.sync_n):
            rt.get(f.remote())
        return cfg.sync_n

    return _rate(run, cfg.repeat)


def bench_tasks_async(rt: ModuleType, cfg: Config) -> float:
    """Submit ``async_n`` tasks, then get them all."""
    f = rt.remote(noop)
    rt.get([f.remote() for _ in range(100)])

    def run() -> int:
        rt.get([f.remote() for _ in range(cfg.async_n)])
        return cfg.async_n

    return _rate(run, cfg.repeat)


def bench_actor_sync(rt: ModuleType, cfg: Config, actor: Any) -> float:
    """``get(a.f.remote())`` in a loop on one actor."""

    def run() -> int:
        for _ in range(cfg.sync_n):
            rt.get(actor.f.remote())
        return cfg.sync_n

    return _rate(run, cfg.repeat)


def bench_actor_async(rt: ModuleType, cfg: Config, actor: Any) -> float:
    """Submit ``async_n`` calls to one actor, then get them all."""

    def run() -> int:
        rt.get([actor.f.remote() for _ in range(cfg.async_n)])
        return cfg.async_n

    return _rate(run, cfg.repeat)


def bench_put_small(rt: ModuleType, cfg: Config) -> float:
    """``put(0)`` in a loop, refs dropped immediately."""

    def run() -> int:
        for _ in range(cfg.put_get_n):
            rt.put(0)
        return cfg.put_get_n

    return _rate(run, cfg.repeat)


def bench_get_small(rt: ModuleType, cfg: Config) -> float:
    """``get`` of one small put ref in a loop."""
    ref = rt.put(0)

    def run() -> int:
        for _ in range(cfg.put_get_n):
            rt.get(ref)
        return cfg.put_get_n

    return _rate(run, cfg.repeat)


def bench_arg_large(rt: ModuleType, cfg: Config) -> tuple[float, dict[str, Any]]:
    """``get(f.remote(arr))`` with a ``arg_mib`` MiB array; median GB/s (1e9 B/s)."""
    f = rt.remote(nbytes)
    rt.get(f.remote(np.zeros(16, dtype=np.uint8)))
    arr = np.random.default_rng(0).integers(0, 256, size=cfg.arg_mib * MIB, dtype=np.uint8)
    times = []
    for _ in range(cfg.arg_reps):
        t0 = time.perf_counter()
        out = rt.get(f.remote(arr))
        times.append(time.perf_counter() - t0)
        assert out == arr.nbytes, out
    gbps = [arr.nbytes / t / 1e9 for t in times]
    return statistics.median(gbps), {"min_gbps": min(gbps), "max_gbps": max(gbps),
                                     "reps": cfg.arg_reps}


def bench_chain(rt: ModuleType, cfg: Config) -> float:
    """Run a chain of ``chain_n`` dependent tasks, each taking the previous ref."""
    f = rt.remote(increment)
    rt.get(f.remote(f.remote(0)))

    def run() -> int:
        ref = f.remote(0)
        for _ in range(cfg.chain_n - 1):
            ref = f.remote(ref)
        assert rt.get(ref) == cfg.chain_n
        return cfg.chain_n

    return _rate(run, cfg.repeat)


def _probe_workers(rt: ModuleType, cfg: Config, reset: bool) -> dict[int, dict[str, Any]]:
    """Run a burst of sleeping probes to reach every worker process; by pid."""
    probe = rt.remote(mem_probe)
    out = rt.get([probe.remote(reset, 0.1) for _ in range(4 * max(cfg.workers, 1))])
    return {p["pid"]: p for p in out}


def bench_rss(rt: ModuleType, cfg: Config) -> list[Row]:
    """``rss_n`` tasks returning 1 MiB each, refs dropped as results come back.

    At most ``rss_window`` tasks are in flight.  Reports the driver's and the
    workers' RSS before and peak RSS (VmHWM, reset before the run) after.
    """
    f = rt.remote(one_mib)
    rt.get(f.remote())
    driver_before = mem_probe(reset=True)
    workers_before = _probe_workers(rt, cfg, reset=True)
    t0 = time.perf_counter()
    pending: list[Any] = []
    submitted = done = 0
    while done < cfg.rss_n:
        while submitted < cfg.rss_n and len(pending) < cfg.rss_window:
            pending.append(f.remote())
            submitted += 1
        ready, pending = rt.wait(pending, num_returns=1)
        for ref in ready:
            assert len(rt.get(ref)) == MIB
        done += len(ready)
        del ready
    elapsed = time.perf_counter() - t0
    driver_after = mem_probe()
    workers_after = _probe_workers(rt, cfg, reset=False)
    per_rank = {str(pid): round(p["hwm"] / MIB, 1) for pid, p in workers_after.items()}
    return [
        ("rss_1mib_tasks", cfg.rss_n / elapsed, "tasks/s", {"window": cfg.rss_window}),
        (
            "rss_driver_before",
            driver_before["rss"] / MIB,
            "MiB",
            {"pid": driver_before["pid"]},
        ),
        (
            "rss_driver_peak",
            driver_after["hwm"] / MIB,
            "MiB",
            {"pid": driver_after["pid"]},
        ),
        (
            "rss_worker_max_before",
            max(p["rss"] for p in workers_before.values()) / MIB,
            "MiB",
            {"pids": sorted(workers_before)},
        ),
        (
            "rss_worker_max_peak",
            max(p["hwm"] for p in workers_after.values()) / MIB,
            "MiB",
            {"peak_mib_by_pid": per_rank},
        ),
    ]


def run_all(rt: ModuleType, cfg: Config, system: str) -> None:
    """Run every in-job row on an initialized runtime, emitting JSON lines."""

    def emit(name: str, value: float, unit: str, extra: dict[str, Any] | None = None) -> None:
        rec: dict[str, Any] = {
            "system": system,
            "name": name,
            "value": value,
            "unit": unit,
        }
        if extra:
            rec["extra"] = extra
        print(json.dumps(rec), flush=True)

    def guarded(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one broken row must not hide the rest
            print(f"[{system}] {name} failed: {exc!r}", file=sys.stderr, flush=True)
            # the table shows the row as failed rather than dropping it
            print(json.dumps({"system": system, "name": name, "failed": repr(exc)}), flush=True)

    # RSS first, so earlier rows (e.g. the 100 MiB argument) do not dominate the peaks.
    def rss() -> None:
        for row in bench_rss(rt, cfg):
            emit(*row)

    if cfg.rss:
        guarded("rss", rss)
    guarded("tasks_sync", lambda: emit("tasks_sync", bench_tasks_sync(rt, cfg), "tasks/s"))
    guarded(
        "tasks_async",
        lambda: emit("tasks_async", bench_tasks_async(rt, cfg), "tasks/s"),
    )
    guarded("put_small", lambda: emit("put_small", bench_put_small(rt, cfg), "puts/s"))
    guarded("get_small", lambda: emit("get_small", bench_get_small(rt, cfg), "gets/s"))
    guarded(
        "chain_1000",
        lambda: emit("chain_1000", bench_chain(rt, cfg), "tasks/s", {"n": cfg.chain_n}),
    )

    def actors() -> None:
        actor = rt.remote(A).remote()
        rt.get(actor.f.remote())
        rt.get([actor.f.remote() for _ in range(100)])
        emit("actor_calls_sync", bench_actor_sync(rt, cfg, actor), "calls/s")
        emit("actor_calls_async", bench_actor_async(rt, cfg, actor), "calls/s")

    guarded("actors", actors)

    def arg() -> None:
        gbps, extra = bench_arg_large(rt, cfg)
        emit("arg_100mib", gbps, "GB/s", {**extra, "mib": cfg.arg_mib})

    guarded("arg_100mib", arg)


def internal_run(args: argparse.Namespace) -> int:
    """Body of a sub-run: import the runtime, init, measure, shut down."""
    cfg = make_config(args)
    if args.internal_run == "hpcray":
        sys.path.insert(0, str(REPO_ROOT))
        rt = importlib.import_module("hpcray")
        rt.init()  # ranks 1..N-1 become workers here and never return
    else:
        rt = importlib.import_module("ray")
        rt.init(num_cpus=args.ray_num_cpus or args.workers)
    try:
        run_all(rt, cfg, args.internal_run)
    finally:
        rt.shutdown()
    return 0


# --------------------------------------------------------------------------
# Parent side: subprocesses, launch timing, table.
# --------------------------------------------------------------------------


def make_config(args: argparse.Namespace) -> Config:
    """Config from parsed arguments."""
    if args.quick:
        cfg = Config.quick(args.workers, not args.no_rss)
    else:
        cfg = Config(rss=not args.no_rss, workers=args.workers)
    if args.rss_tasks:
        cfg.rss_n = args.rss_tasks
    return cfg


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the subprocess's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


#: hpcray's execution modes, measured as two systems
MODES = {"hpcray": "process", "hpcray-thread": "thread"}


def _env(system: str) -> dict[str, str]:
    """Environment for a sub-run; hpcray gets the repo root on PYTHONPATH and its mode."""
    env = dict(os.environ)
    if system in MODES:
        env["HPCRAY_EXECUTION"] = MODES[system]
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
    return env


def run_collect(
    cmd: Sequence[str], system: str, timeout: float
) -> tuple[list[dict[str, Any]], bool]:
    """Run ``cmd`` in its own process group; return its JSON rows and success."""
    log(f"[{system}] $ {shlex.join(cmd)}")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=_env(system),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        ok = False
        log(f"[{system}] timed out after {timeout:.0f} s; process group killed")
    _kill_group(proc)  # reap stragglers left in the group
    rows = []
    for raw in out.splitlines():
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and {"system", "name"} <= rec.keys() and (
                {"value", "unit"} <= rec.keys() or "failed" in rec):
            rows.extend(_expand_failed(rec))
    if not ok or not rows:
        log(
            f"[{system}] exit code {proc.returncode}; stderr tail:\n"
            + "\n".join(err.splitlines()[-25:])
        )
    elif err.strip():
        for line in err.splitlines():
            if "failed:" in line:
                log(line)
    if not ok:  # the rows this run never got to are failures, not gaps
        seen = {r["name"] for r in rows}
        rows += [{"system": system, "name": name, "failed": f"exit code {proc.returncode}"}
                 for name, _ in ROWS if name not in seen and name != "launch_to_first_result"
                 and not name.startswith("rss_")]
    return rows, ok and bool(rows)


#: rows measured together: a failure of the group fails each of them
GROUPS = {"actors": ["actor_calls_sync", "actor_calls_async"],
          "rss": ["rss_1mib_tasks", "rss_driver_before", "rss_driver_peak",
                  "rss_worker_max_before", "rss_worker_max_peak"]}


def _expand_failed(rec: dict[str, Any]) -> list[dict[str, Any]]:
    if "failed" not in rec or rec["name"] not in GROUPS:
        return [rec]
    return [{**rec, "name": name} for name in GROUPS[rec["name"]]]


LAUNCH_CODE = {
    "hpcray": (
        "import hpcray\n"
        "@hpcray.remote\n"
        "def f():\n"
        "    return 1\n"
        "hpcray.init()\n"
        f"print('{RESULT_TAG}', hpcray.get(f.remote()), flush=True)\n"
        "hpcray.shutdown()\n"
    ),
    "ray": (
        "import ray\n"
        "@ray.remote\n"
        "def f():\n"
        "    return 1\n"
        "ray.init(num_cpus={num_cpus})\n"
        f"print('{RESULT_TAG}', ray.get(f.remote()), flush=True)\n"
        "ray.shutdown()\n"
    ),
}


def time_to_first_result(cmd: Sequence[str], system: str, timeout: float) -> float | None:
    """Seconds from before Popen until the result line is read (None on failure)."""
    lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
    tail: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        env=_env(system),
        start_new_session=True,
    )

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put((time.perf_counter(), line))
        lines.put((time.perf_counter(), None))

    threading.Thread(target=reader, daemon=True).start()
    deadline = t0 + timeout
    found: float | None = None
    try:
        while found is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                log(f"[{system}] launch timed out after {timeout:.0f} s")
                break
            try:
                ts, line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                break
            tail = (tail + [line.rstrip()])[-25:]
            if line.startswith(RESULT_TAG) and line.split()[-1] == "1":
                found = ts - t0
        if found is not None:
            proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        log(f"[{system}] launch job did not exit after its result; killed")
    finally:
        _kill_group(proc)
        proc.wait()
    if found is None:
        log(f"[{system}] launch failed (exit {proc.returncode}); output tail:\n" + "\n".join(tail))
    return found


def measure_launch(
    cmd: Sequence[str], system: str, reps: int, timeout: float
) -> dict[str, Any] | None:
    """Median launch-to-first-result over ``reps`` fresh launches, as a JSON row."""
    shown = cmd[: cmd.index("-c") + 1] if "-c" in cmd else cmd
    log(f"[{system}] launch x{reps}: {shlex.join(shown)} ...")
    times = []
    for _ in range(reps):
        t = time_to_first_result(cmd, system, timeout)
        if t is None:
            return None
        times.append(t)
    return {
        "system": system,
        "name": "launch_to_first_result",
        "value": statistics.median(times),
        "unit": "s",
        "extra": {"all_s": [round(t, 4) for t in times]},
    }


def find_mpiexec(explicit: str | None) -> str:
    """``--mpiexec``, else the one next to ``sys.executable``, else ``PATH``."""
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if not found:
        raise SystemExit("mpiexec not found (next to sys.executable or on PATH); use --mpiexec")
    return found


def find_ray_python(explicit: str | None) -> str | None:
    """``--ray-python``, else /opt/rayvenv, else this interpreter if it has ``ray``."""
    if explicit:
        return explicit
    if Path(DEFAULT_RAY_PYTHON).exists():
        return DEFAULT_RAY_PYTHON
    if importlib.util.find_spec("ray") is not None:
        return sys.executable
    return None


def _fmt(v: float | None) -> str:
    """Compact number formatting for the table."""
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def evaluate(
    name: str, unit: str, h: float | None, r: float | None
) -> tuple[float | None, str, str]:
    """Ratio (>1 means hpcray better), target text and PASS/MISS/n/a for one row."""
    higher_better = unit.endswith("/s")
    ratio = None
    if h is not None and r is not None and h > 0 and r > 0:
        ratio = h / r if higher_better else r / h
    if name == "launch_to_first_result":
        target = f"< {LAUNCH_TARGET_S} s"
        status = "n/a" if h is None else ("PASS" if h < LAUNCH_TARGET_S else "MISS")
        return ratio, target, status
    if not higher_better or name == "rss_1mib_tasks":  # the RSS row is informational
        return ratio, "-", ""
    if name == "arg_100mib":  # the issue sets an absolute target for this row
        checks: list[bool | None] = [None if h is None else h >= ARG_TARGET_GBPS]
        target = f">= {ARG_TARGET_GBPS:g} GB/s"
    else:
        checks = [None if ratio is None else ratio >= THROUGHPUT_TARGET_X]
        target = f">= {THROUGHPUT_TARGET_X:g}x ray"
    if any(c is False for c in checks):
        status = "MISS"
    elif all(c is True for c in checks):
        status = "PASS"
    else:
        status = "n/a"
    return ratio, target, status


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (system, row): the median over rounds and its min..max; per row: the median of the
    rounds' ratios (each round runs both systems back to back, so a slow phase of the machine
    hits both). Rows a system failed in any round say so."""
    by: dict[tuple[str, str], dict[int, Any]] = {}
    for r in rows:
        by.setdefault((r["system"], r["name"]), {})[r.get("round", 0)] = r
    out = []
    for name, unit in ROWS:
        rec: dict[str, Any] = {"name": name, "unit": unit}
        for system in (*MODES, "ray"):
            got = by.get((system, name), {})
            values = [float(g["value"]) for g in got.values() if "value" in g]
            failed = [g["failed"] for g in got.values() if "failed" in g]
            rec[system] = {"median": statistics.median(values) if values else None,
                           "min": min(values, default=None), "max": max(values, default=None),
                           "n": len(values), "failed": failed}
        higher_better = unit.endswith("/s")
        for system in MODES:
            ratios = []
            for rnd, h in by.get((system, name), {}).items():
                r = by.get(("ray", name), {}).get(rnd)
                if r and "value" in h and "value" in r and h["value"] > 0 and r["value"] > 0:
                    ratios.append(h["value"] / r["value"] if higher_better
                                  else r["value"] / h["value"])
            rec[system]["ratio"] = statistics.median(ratios) if ratios else None
            rec[system]["ratios"] = ratios
        if any(rec[s]["n"] or rec[s]["failed"] for s in (*MODES, "ray")):
            out.append(rec)
    return out


def _cell(stats: dict[str, Any]) -> str:
    if stats["failed"] and not stats["n"]:
        return "FAILED"
    if stats["median"] is None:
        return "-"
    text = _fmt(stats["median"])
    if stats["n"] > 1:
        text += f" ({_fmt(stats['min'])}..{_fmt(stats['max'])})"
    if stats["failed"]:
        text += f", failed {len(stats['failed'])}x"
    return text


def _ratio(stats: dict[str, Any]) -> str:
    if stats["ratio"] is None:
        return "-"
    text = f"{stats['ratio']:.2f}x"
    if len(stats["ratios"]) > 1:
        text += f" ({min(stats['ratios']):.2f}..{max(stats['ratios']):.2f})"
    return text


def _status(rec: dict[str, Any], system: str) -> str:
    stats = rec[system]
    _, _, status = evaluate(rec["name"], rec["unit"], stats["median"], rec["ray"]["median"])
    if stats["ratio"] is not None and rec["name"] not in ("arg_100mib",
                                                          "launch_to_first_result"):
        status = ("" if not status or status == "n/a" else
                  ("PASS" if stats["ratio"] >= THROUGHPUT_TARGET_X else "MISS"))
    if stats["failed"] or rec["ray"]["failed"]:
        status = "FAILED"
    return status


def table(rows: list[dict[str, Any]]) -> str:
    """Comparison table: each hpcray mode against Ray, with the target and status of each."""
    present = [s for s in MODES if any(r["system"] == s for r in rows)]
    header = ["row", "unit"]
    for system in present:
        header += [f"{system} ({MODES[system]}) median (min..max)", "ratio", "status"]
    header += ["ray median (min..max)", "target"]
    body = []
    rounds = max((r.get("round", 0) for r in rows), default=0) + 1
    for rec in summarize(rows):
        line = [rec["name"], rec["unit"]]
        for system in present:
            line += [_cell(rec[system]), _ratio(rec[system]), _status(rec, system)]
        _, target, _ = evaluate(rec["name"], rec["unit"], None, None)
        body.append([*line, _cell(rec["ray"]), target])
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    notes = (
        f"{rounds} round(s), the systems in a rotating order within each round; every cell is "
        "the median over rounds (min..max); ratio: the median of the rounds' ratios against "
        "Ray, hpcray/ray for throughputs, ray/hpcray for times and MiB (>1 = hpcray better); "
        "launch is the median of fresh launches per round; Ray's RSS rows cover driver and "
        "worker processes only (not raylet/plasma)"
    )
    return "\n".join(lines) + "\n" + notes


def log(msg: str) -> None:
    """Progress to stderr."""
    print(msg, file=sys.stderr, flush=True)


def run_system(system: str, args: argparse.Namespace, passthrough: list[str], launch_reps: int,
               ray_python: str | None) -> tuple[list[dict[str, Any]], bool]:
    """One round of one system: its in-job rows and its launch row."""
    rows: list[dict[str, Any]] = []
    ok = True
    nranks = str(args.workers + 1)
    if system in MODES:
        mpiexec = [
            find_mpiexec(args.mpiexec),
            *shlex.split(args.mpiexec_args),
            "-n",
            nranks,
        ]
        got, good = run_collect(
            [
                *mpiexec,
                sys.executable,
                str(SCRIPT),
                "--internal-run",
                "hpcray",
                *passthrough,
            ],
            system,
            args.timeout,
        )
        rows += [{**rec, "system": system} for rec in got]
        ok &= good
        launch = measure_launch(
            [*mpiexec, sys.executable, "-c", LAUNCH_CODE["hpcray"]],
            system,
            launch_reps,
            args.launch_timeout,
        )
        ok &= launch is not None
        rows += [{**launch, "system": system}] if launch else [
            {"system": system, "name": "launch_to_first_result", "failed": "no result"}]
    else:
        ncpu = args.ray_num_cpus or args.workers
        got, good = run_collect(
            [
                ray_python,
                str(SCRIPT),
                "--internal-run",
                "ray",
                *passthrough,
                "--ray-num-cpus",
                str(ncpu),
            ],
            "ray",
            args.timeout,
        )
        rows += got
        ok &= good
        code = LAUNCH_CODE["ray"].replace("{num_cpus}", str(ncpu))
        launch = measure_launch([ray_python, "-c", code], "ray", launch_reps, args.launch_timeout)
        ok &= launch is not None
        rows += [launch] if launch else [{"system": "ray", "name": "launch_to_first_result",
                                          "failed": "no result"}]
    return rows, ok


def parent(args: argparse.Namespace) -> int:
    """Launch all sub-runs, print JSON lines and the table."""
    rows: list[dict[str, Any]] = []
    ok = True
    passthrough = ["--workers", str(args.workers)]
    if args.quick:
        passthrough.append("--quick")
    if args.no_rss:
        passthrough.append("--no-rss")
    if args.rss_tasks:
        passthrough += ["--rss-tasks", str(args.rss_tasks)]
    launch_reps = 1 if args.quick else args.launch_reps

    ray_python = None if args.skip_ray else find_ray_python(args.ray_python)
    if not ray_python and not args.skip_ray:
        log("no Ray interpreter found (--ray-python); Ray half skipped")
    modes = [m for m in args.modes.split(",") if m]
    systems = [s for s, on in [*((name, not args.skip_hpcray and MODES[name] in modes)
                                 for name in MODES), ("ray", bool(ray_python))] if on]
    for rnd in range(args.rounds):
        order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
        for system in order:
            log(f"round {rnd + 1}/{args.rounds}: {system}")
            got, good = run_system(system, args, passthrough, launch_reps, ray_python)
            rows += [{**rec, "round": rnd} for rec in got]
            ok &= good

    for rec in rows:
        print(json.dumps(rec), flush=True)
    if not args.json_only:
        print()
        print(table(rows))
    return 0 if ok else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="hpcray workers (MPI ranks - 1); default 2",
    )
    p.add_argument("--quick", action="store_true", help="smaller counts, for a smoke test")
    p.add_argument("--json-only", action="store_true", help="print only the JSON lines")
    p.add_argument("--skip-ray", action="store_true", help="do not run the Ray half")
    p.add_argument("--skip-hpcray", action="store_true", help="do not run the hpcray half")
    p.add_argument("--ray-python", help=f"interpreter with ray (default {DEFAULT_RAY_PYTHON})")
    p.add_argument("--ray-num-cpus", type=int, default=0, help="Ray num_cpus (default: --workers)")
    p.add_argument("--no-rss", action="store_true", help="skip the 1 MiB-returns RSS row")
    p.add_argument("--rss-tasks", type=int, default=0, help="tasks in the RSS row (default 10000)")
    p.add_argument("--launch-reps", type=int, default=3, help="fresh launches per system (median)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of both systems, alternating which runs first (default 3)")
    p.add_argument("--mpiexec", help="mpiexec to use (default: beside sys.executable, else PATH)")
    p.add_argument("--mpiexec-args", default="", help="extra mpiexec arguments, shell-quoted")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per benchmark sub-run")
    p.add_argument("--launch-timeout", type=float, default=120.0, help="seconds per launch job")
    p.add_argument("--modes", default="process,thread",
                   help="hpcray execution modes to measure (HPCRAY_EXECUTION), default both")
    p.add_argument("--internal-run", choices=["hpcray", "ray"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.internal_run:
        return internal_run(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
