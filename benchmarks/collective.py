"""Allreduce through hpcray.collective against raw mpi4py ``Allreduce`` on the same ranks.

    python benchmarks/collective.py                 # 2 and 4 ranks, 8 B, 1 MiB, 100 MiB
    python benchmarks/collective.py --ranks 2 --quick

For each rank count N the parent runs, one after the other in the same invocation,
``mpiexec -n N python collective.py --internal raw`` (plain mpi4py, in place, float32 SUM)
and ``mpiexec -n N+1 python collective.py --internal hpcray`` (the head plus N worker
ranks, one actor per worker rank in one collective group). Each run prints one JSON line
with the mean seconds per allreduce (the slowest rank's), after reps // 10 warm-up calls as
the OSU micro-benchmarks do. The pair of runs is repeated ``--trials`` times; the table
shows each side's median run and the median of the pairs' ratios. This machine switches
every 20-30 s between phases in which code runs at full and at about half speed (both
sides alike), so a pair's two runs, seconds apart, compare better than two medians.
Targets: 100 MiB at >= 85 % of raw bandwidth, 8 B latency within 2x of raw.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TAG = "COLLECTIVE_BENCH"
SIZES = {"8 B": 8, "1 MiB": 1 << 20, "100 MiB": 100 << 20}


def _reps(size: int, quick: bool) -> int:
    reps = 10000 if size <= 1024 else 50 if size <= 8 << 20 else 5
    return max(reps // 10, 2) if quick else reps


def _timed(allreduce, barrier, size: int, reps: int) -> float:
    """Mean seconds per allreduce of a float32 array of size bytes, after reps // 10 (at
    least 2) warm-up calls, as the OSU micro-benchmarks do (10,000 and 1,000 for 8 B)."""
    import numpy as np

    a = np.zeros(max(size // 4, 1), np.float32)
    for _ in range(max(reps // 10, 2)):
        allreduce(a)
    barrier()
    start = time.perf_counter()
    for _ in range(reps):
        allreduce(a)
    return (time.perf_counter() - start) / reps


def run_raw(sizes: list[int], quick: bool) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out = {}
    for size in sizes:
        t = _timed(lambda a: comm.Allreduce(MPI.IN_PLACE, a), comm.Barrier, size,
                   _reps(size, quick))
        out[size] = comm.allreduce(t, op=MPI.MAX)
    if comm.rank == 0:
        print(TAG, json.dumps(out), flush=True)


def run_hpcray(sizes: list[int], quick: bool) -> None:
    import hpcray
    import hpcray.collective as col

    hpcray.init()
    n = hpcray.get_runtime_context().get_world_size() - 1

    @hpcray.remote(num_cpus=1)
    class Member:
        def __init__(self, rank: int):
            col.init_collective_group(n, rank, group_name="bench")

        def bench(self, size: int, reps: int) -> float:
            return _timed(lambda a: col.allreduce(a, "bench"), lambda: col.barrier("bench"),
                          size, reps)

    members = [Member.remote(r) for r in range(n)]
    out = {size: max(hpcray.get([m.bench.remote(size, _reps(size, quick)) for m in members]))
           for size in sizes}
    print(TAG, json.dumps(out), flush=True)


def _launch(n: int, mode: str, sizes: list[int], quick: bool) -> dict[int, float]:
    sys.path.insert(0, str(REPO_ROOT))
    from hpcray._private.job.launch import mpiexec_command

    argv = [sys.executable, str(Path(__file__).resolve()), "--internal", mode,
            "--sizes", *map(str, sizes)] + (["--quick"] if quick else [])
    cmd, env_add = mpiexec_command(n, argv)
    env = {**os.environ, **env_add, "PYTHONPATH": str(REPO_ROOT) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            return {int(k): v for k, v in json.loads(line[len(TAG):]).items()}
    raise RuntimeError(f"{mode} run on {n} ranks failed:\n{proc.stdout[-3000:]}\n"
                       f"{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES.values()))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--trials", type=int, default=5,
                        help="runs of each side per rank count (the median is shown)")
    parser.add_argument("--internal", choices=["raw", "hpcray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal == "raw":
        return run_raw(args.sizes, args.quick)
    if args.internal == "hpcray":
        return run_hpcray(args.sizes, args.quick)
    names = {v: k for k, v in SIZES.items()}
    rows = []
    for n in args.ranks:
        trials = [(_launch(n, "raw", args.sizes, args.quick),
                   _launch(n + 1, "hpcray", args.sizes, args.quick))
                  for _ in range(max(args.trials, 1))]
        for size in args.sizes:
            rows.append((n, size, statistics.median(raw[size] for raw, _ in trials),
                         statistics.median(ours[size] for _, ours in trials),
                         statistics.median(ours[size] / raw[size] for raw, ours in trials)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"allreduce, float32 SUM in place, mean of repetitions (slowest rank); times: each "
          f"side's median of {max(args.trials, 1)} alternating runs; ratio: the median of the "
          f"runs' ratios (hpcray run / the raw run just before it); {os.cpu_count()} cores, "
          f"load average {load:.1f} at the end")
    print("| ranks | size | raw mpi4py | hpcray.collective | hpcray / raw time | "
          "bandwidth (raw, hpcray) | target |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for n, size, raw_t, our_t, ratio in rows:
        name = names.get(size, f"{size} B")
        if size >= 1 << 20:
            bw = f"{size / raw_t / 1e9:.2f}, {size / our_t / 1e9:.2f} GB/s"
            target = "" if size < 100 << 20 else (
                f"bandwidth >= 85 % of raw: {'PASS' if 1 / ratio >= 0.85 else 'MISS'} "
                f"({100 / ratio:.0f} %)")
        else:
            bw = ""
            target = f"latency <= 2x raw: {'PASS' if ratio <= 2 else 'MISS'}"
        print(f"| {n} | {name} | {raw_t * 1e6:,.1f} us | {our_t * 1e6:,.1f} us | {ratio:.2f} | "
              f"{bw} | {target} |")


if __name__ == "__main__":
    main()
