"""Serve under sustained overload: 500 connections for 60 s (wrk). Every rank's memory, file
descriptors and threads stay flat, and clients see no error but 503s."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import threading

import psutil
import pytest
from test_serve_hardening import HeldJob, _http

pytest.importorskip("uvicorn")
SOAK_S = 60
CONNECTIONS = 500


def _job_processes(job: HeldJob) -> list[psutil.Process]:
    root = psutil.Process(job.proc.pid)
    return [p for p in root.children(recursive=True) if "python" in p.name()]


def _sample(procs: list[psutil.Process]) -> list[tuple[int, int, int]]:
    """(RSS bytes, open fds, threads) of each process: ranks, forkservers, executors (the
    replicas run in executors; one that dies mid-soak fails the sample)."""
    return [(p.memory_info().rss, p.num_fds(), p.num_threads()) for p in procs]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt install wrk; "
                    ".ci/run installs it as root)")
def test_soak_under_500_connections(tmp_path) -> None:
    job = HeldJob(tmp_path, [])
    try:
        procs = _job_processes(job)
        ranks = [p for p in procs if "hold.py" in " ".join(p.cmdline())]  # not executors
        assert len(ranks) == 3
        samples: list[list[tuple[int, int, int]]] = []
        stop = threading.Event()

        def sampler() -> None:
            while not stop.wait(5):
                samples.append(_sample(procs))

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        wrk = subprocess.run(
            ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SOAK_S}s", "--timeout", "20s",
             "-H", f"Authorization: Bearer {job.token}",
             f"http://127.0.0.1:{job.port}/echo"],
            capture_output=True, text=True, timeout=SOAK_S + 120, check=False)
        stop.set()
        thread.join()
        assert wrk.returncode == 0, wrk.stderr
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                           r"timeout (\d+)", wrk.stdout)
        assert errors is None or all(int(n) == 0 for n in errors.groups()), wrk.stdout
        done = int(re.search(r"(\d+) requests in", wrk.stdout).group(1))
        assert done > 0, wrk.stdout
        status, body = _http(job.port, "/-/metrics", job.token)
        assert status == 200
        codes = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'hpcray_serve_requests_total\{[^}]*code="(\d+)"[^}]*\} ([0-9.e+]+)', body.decode())}
        assert codes.get("200", 0) > 0 and set(codes) <= {"200", "503"}, codes
        # flat: the last quarter of the samples against the first quarter (after the ramp-up)
        quarter = max(len(samples) // 4, 1)
        assert len(samples) >= 8, samples
        for rank in range(len(procs)):
            first = [s[rank] for s in samples[1:1 + quarter]]
            last = [s[rank] for s in samples[-quarter:]]
            rss0, rss1 = (statistics.median(x[0] for x in xs) for xs in (first, last))
            fds0, fds1 = (max(x[1] for x in xs) for xs in (first, last))
            thr0, thr1 = (max(x[2] for x in xs) for xs in (first, last))
            assert rss1 <= rss0 * 1.25 + (32 << 20), (rank, rss0, rss1)
            assert fds1 <= fds0 + 32, (rank, fds0, fds1)
            assert thr1 <= thr0 + 4, (rank, thr0, thr1)
        result = job.finish()
        assert result["health"] == 200 and result["status"] == "RUNNING", result
    finally:
        job.kill()

