"""Scheduler decisions per second with simulated ranks, in-process (no MPI, no workers).

    python benchmarks/scheduler.py                 # 200k tasks at 100 and 1000 ranks, 1M at 10000
    python benchmarks/scheduler.py --tasks 50000   # the same number of tasks at every size

For each size R: R ranks, 4 per node, {"CPU": 1} each; every 8th rank also has {"accel": 1}.
A backlog of 2*R requests stays queued (1 in 100 asks for {"CPU": 1, "accel": 1}, the rest for
{"CPU": 1}). Each round calls schedule() once, then release()s every task it placed, as if they
all finished at once. decisions_per_s counts placements per CPU second of this process over the
whole loop (submit + schedule + release): CPU time, unlike wall time, does not count the time other
processes on a shared machine take. schedule_share is the part of it spent in schedule().

Prints one JSON line per size, then a table with the ratio of decisions/s at 10000 vs 100 ranks
(1.0 means the cost of a decision does not grow with the number of ranks).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcray._private.core.scheduler import Request, Scheduler

RANKS_PER_NODE = 4
DEFAULT_TASKS = {100: 200_000, 1000: 200_000, 10_000: 1_000_000}


def run(ranks: int, tasks: int) -> dict:
    """Places `tasks` requests on `ranks` simulated ranks; returns the JSON record."""
    scheduler = Scheduler()
    for rank in range(ranks):
        resources = {"CPU": 1.0, "accel": 1.0} if rank % 8 == 0 else {"CPU": 1.0}
        scheduler.add_rank(rank, f"node{rank // RANKS_PER_NODE}", resources)
    cpu_only, with_accel = {"CPU": 1.0}, {"CPU": 1.0, "accel": 1.0}
    submitted = placed = 0
    in_schedule = 0.0
    start, start_wall = time.process_time(), time.perf_counter()
    while placed < tasks:
        backlog_end = min(tasks, placed + 2 * ranks)
        while submitted < backlog_end:
            scheduler.submit(Request(submitted, with_accel if submitted % 100 == 99 else cpu_only))
            submitted += 1
        before = time.process_time()
        decisions = scheduler.schedule()
        in_schedule += time.process_time() - before
        if not decisions:
            raise RuntimeError(f"no progress with {scheduler.num_queued()} requests queued")
        placed += len(decisions)
        for request, rank in decisions:
            scheduler.release(rank, request.resources)
    elapsed, wall = time.process_time() - start, time.perf_counter() - start_wall
    assert scheduler.num_queued() == 0
    assert scheduler.available_resources() == scheduler.cluster_resources()
    return {"ranks": ranks, "tasks": placed, "decisions_per_s": round(placed / elapsed),
            "cpu_s": round(elapsed, 2), "wall_s": round(wall, 2),
            "schedule_share": round(in_schedule / elapsed, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, help="tasks to place at every size "
                        "(default: 200000 at 100 and 1000 ranks, 1000000 at 10000)")
    args = parser.parse_args()
    records = []
    for ranks, default_tasks in DEFAULT_TASKS.items():
        record = run(ranks, args.tasks or default_tasks)
        print(json.dumps(record), flush=True)
        records.append(record)
    print()
    print(f"{'ranks':>6} {'tasks':>9} {'decisions/s':>12} {'cpu_s':>7} {'wall_s':>7}")
    for record in records:
        print(f"{record['ranks']:>6} {record['tasks']:>9} {record['decisions_per_s']:>12} "
              f"{record['cpu_s']:>7} {record['wall_s']:>7}")
    ratio = records[-1]["decisions_per_s"] / records[0]["decisions_per_s"]
    print(f"decisions/s at {records[-1]['ranks']} ranks / at {records[0]['ranks']} ranks: "
          f"{ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
