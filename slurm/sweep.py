"""A parameter sweep that survives preemption: run it with slurm/sweep-requeue.sbatch.

    sbatch slurm/sweep-requeue.sbatch slurm/sweep.py --trials 64

Finished trials are saved in the job's state directory after each result and once more by the
on_preempt callback; when Slurm restarts the job (same job id) only the missing trials run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time

import hpcray


@hpcray.remote
def trial(lr: float, width: int) -> float:
    """Stands in for a training run: a made-up loss, after some work."""
    time.sleep(0.5)
    return (math.log10(lr) + 2.5) ** 2 + (width - 48) ** 2 / 1000


def save(path: str, results: dict) -> None:
    """Atomic: a crash leaves the previous file, never half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=32)
    args = parser.parse_args()
    hpcray.init()
    ctx = hpcray.get_runtime_context()
    path = os.path.join(ctx.get_state_dir(), "results.json")
    results: dict[str, float] = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    print(f"job {ctx.get_job_id()} restart {ctx.get_restart_count()}: "
          f"{len(results)} of {args.trials} trials already done", flush=True)
    lock = threading.Lock()

    @hpcray.on_preempt
    def checkpoint() -> None:
        with lock:
            save(path, results)
        print(f"preempted: saved {len(results)} results", flush=True)

    grid = [(10 ** (-4 + 3 * i / max(args.trials - 1, 1)), 16 + (i * 7) % 64)
            for i in range(args.trials)]
    todo = {trial.remote(lr, w): str(i)
            for i, (lr, w) in enumerate(grid) if str(i) not in results}
    pending = list(todo)
    while pending:
        ready, pending = hpcray.wait(pending, num_returns=1)
        with lock:
            results[todo[ready[0]]] = hpcray.get(ready[0])
            save(path, results)
    best = min(results, key=results.get)
    print(f"done: {len(results)} trials, best trial {best} loss {results[best]:.4f}", flush=True)


if __name__ == "__main__":
    main()
