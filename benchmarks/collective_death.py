"""How long the surviving members of a collective group wait after a member dies.

    python benchmarks/collective_death.py                 # 5 rounds of each case
    python benchmarks/collective_death.py --rounds 3 --openmpi /opt/ompi/bin/mpirun

Each round is one job of 4 ranks: 3 actors (one per worker rank) form a group whose timeout
is 600 s, two of them wait in an allreduce, and the driver ends the third: it SIGKILLs the
third's rank ("rank killed"), or calls hpcray.kill() on it ("hpcray.kill"). The time is from
just before the kill (the driver's clock) to the later of the two survivors' errors (their
clocks: the same host's CLOCK_MONOTONIC). Under MPICH the head finds a dead rank by its pid;
under Open MPI with ULFM (``--openmpi``, an mpirun with ULFM) MPI reports it. Before the
member-death path the survivors waited for the group's timeout (HPCRAY_COLLECTIVE_TIMEOUT,
default 180 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TAG = "DEATH_BENCH"


def job(mode: str) -> None:
    """One round, inside the job: prints the survivors' wait after the kill, in seconds."""
    import signal

    import numpy as np

    import hpcray
    import hpcray.collective as col

    @hpcray.remote(num_cpus=1)
    class Member:
        def pid(self):
            return os.getpid()

        def join(self, rank):
            col.init_collective_group(3, rank, group_name="g", timeout_s=600)

        def allreduce(self, x, marker):
            open(marker, "w").close()
            try:
                col.allreduce(x.copy(), "g")
            except col.CollectiveGroupError:
                return time.monotonic()
            return None

    hpcray.init()
    ms = [Member.remote() for _ in range(3)]
    hpcray.get([m.join.remote(r) for r, m in enumerate(ms)], timeout=60)
    victim = hpcray.get(ms[2].pid.remote(), timeout=60)
    here = tempfile.mkdtemp()
    markers = [os.path.join(here, str(i)) for i in range(2)]
    refs = [m.allreduce.remote(np.ones(1000), mk) for m, mk in zip(ms[:2], markers)]
    while not all(os.path.exists(mk) for mk in markers):
        time.sleep(0.005)
    time.sleep(0.2)  # both are inside the allreduce by now
    start = time.monotonic()
    if mode == "kill":
        hpcray.kill(ms[2])
    else:
        os.kill(victim, signal.SIGKILL)
    ends = hpcray.get(refs, timeout=120)
    wait = max(ends) - start if None not in ends else None
    sys.stdout.write(f"{TAG} {json.dumps({'wait': wait})}\n")
    sys.stdout.flush()


def one_round(mode: str, launcher: str) -> float | None:
    sys.path.insert(0, str(REPO_ROOT))
    from hpcray._private.job.launch import mpiexec_command

    cmd, env = mpiexec_command(4, [sys.executable, __file__, "--internal", mode],
                               mpiexec=launcher)
    env = {**os.environ, **env, "PYTHONPATH": f"{REPO_ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180,
                          check=False, start_new_session=True)
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])["wait"]
    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--openmpi", default=os.environ.get("HPCRAY_TEST_OPENMPI", ""),
                        help="an Open MPI mpirun with ULFM, or its install prefix")
    parser.add_argument("--internal", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal:
        job(args.internal)
        return
    sys.path.insert(0, str(REPO_ROOT))
    from hpcray._private.job.launch import find_mpiexec

    cases = [("MPICH", "rank killed", "rank", find_mpiexec()),
             ("MPICH", "hpcray.kill", "kill", find_mpiexec())]
    if args.openmpi:
        mpirun = args.openmpi if args.openmpi.endswith("mpirun") else \
            str(Path(args.openmpi) / "bin" / "mpirun")
        cases.append(("Open MPI ULFM", "rank killed", "rank", mpirun))
    waits: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for r in range(args.rounds):  # the cases alternate within each round
        for i, (_, _, mode, launcher) in enumerate(cases):
            wait = one_round(mode, launcher)
            if wait is not None:
                waits[i].append(wait)
            print(f"round {r + 1}: {cases[i][0]}, {cases[i][1]}: "
                  f"{'failed' if wait is None else f'{wait * 1000:.0f} ms'}", file=sys.stderr)
    print("| MPI | member | rounds | survivors' wait, median | min - max |")
    print("|---|---|---:|---:|---:|")
    for i, (mpi, how, _, _) in enumerate(cases):
        w = sorted(waits[i])
        if w:
            print(f"| {mpi} | {how} | {len(w)} | {statistics.median(w) * 1000:.0f} ms | "
                  f"{w[0] * 1000:.0f} - {w[-1] * 1000:.0f} ms |")
        else:
            print(f"| {mpi} | {how} | 0 | - | - |")


if __name__ == "__main__":
    main()
