"""Tune benchmark: trivial trials with ASHA, hpcray.tune vs Ray Tune, side by side.

    python benchmarks/tune.py                  # 40 trials each, 3 alternating rounds
    python benchmarks/tune.py --ray-python ''  # hpcray only

Each trial reports 10 times; ASHA (max_t=10, grace_period=1, reduction_factor=4) stops the
weaker ones early. Both systems run the very same trials: a grid of ``--trials`` values of x
(no random sampling), so ASHA sees the same losses. The parent process imports neither system: it
runs ``python benchmarks/tune.py --internal hpcray`` (which starts its own MPI job with
``hpcray.init(num_cpus=W)``) and ``RAY_PYTHON benchmarks/tune.py --internal ray``
(``ray.init(num_cpus=W)``), and compares trials per second of ``Tuner.fit()``.
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
DEFAULT_RAY_PYTHON = "/opt/rayvenv/bin/python"
TAG = "TUNE_BENCH "


def trial_function(report):
    """A trivial trainable: 10 reports of a loss set by the config."""

    def trivial(config):
        for i in range(10):
            report({"loss": config["x"] * (10 - i)})

    return trivial


def internal(system: str, trials: int, workers: int) -> None:
    start = time.perf_counter()
    if system == "hpcray":
        import hpcray as rt
        from hpcray import tune
        from hpcray.tune import ASHAScheduler, RunConfig, TuneConfig, Tuner

        rt.init(num_cpus=workers)
        report = tune.report
    else:
        import ray as rt
        from ray import tune
        from ray.tune import RunConfig, TuneConfig, Tuner
        from ray.tune.schedulers import ASHAScheduler

        # address="local": a fresh cluster of our own, never one someone else left running
        rt.init(address="local", num_cpus=workers, include_dashboard=False,
                log_to_driver=False)
        report = tune.report
    ready = time.perf_counter()
    tuner = Tuner(
        trial_function(report),
        param_space={"x": tune.grid_search([(i + 0.5) / trials for i in range(trials)])},
        tune_config=TuneConfig(metric="loss", mode="min", num_samples=1,
                               scheduler=ASHAScheduler(max_t=10, grace_period=1,
                                                       reduction_factor=4)),
        run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix=f"tune-bench-{system}-"),
                             name="bench", verbose=0))
    t0 = time.perf_counter()
    grid = tuner.fit()
    fit_s = time.perf_counter() - t0
    reports = sum(r.metrics.get("training_iteration", 0) for r in grid)
    print(TAG + json.dumps({"system": system, "trials": len(grid), "errors": grid.num_errors,
                            "reports": reports, "fit_s": fit_s, "init_s": ready - start,
                            "trials_per_s": len(grid) / fit_s}), flush=True)
    rt.shutdown()


def run(cmd: list[str], timeout: float) -> dict | None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                              env=env,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        print(f"timed out after {timeout}s: {' '.join(cmd)}", file=sys.stderr)
        return None
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    print(f"no result from {' '.join(cmd)} (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
          f"{proc.stderr[-3000:]}", file=sys.stderr)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="trials of each system")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of both systems, alternating which runs first")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON)
    parser.add_argument("--internal", choices=("hpcray", "ray"))
    args = parser.parse_args()
    if args.internal:
        internal(args.internal, args.trials, args.workers)
        return 0
    script = str(Path(__file__).resolve())
    common = ["--workers", str(args.workers), "--trials", str(args.trials)]
    systems = {"hpcray": ([sys.executable, script, "--internal", "hpcray", *common], 600)}
    if args.ray_python and os.path.exists(args.ray_python):
        systems["ray"] = ([args.ray_python, script, "--internal", "ray", *common], 1800)
    rows: dict[str, list[dict]] = {name: [] for name in systems}
    ratios = []
    for rnd in range(args.rounds):
        names = list(systems) if rnd % 2 == 0 else list(systems)[::-1]
        got = {name: run(*systems[name]) for name in names}
        for name, row in got.items():
            if row:
                rows[name].append(row)
        if len(systems) == 2 and got.get("hpcray") and got.get("ray"):
            ratios.append(got["hpcray"]["trials_per_s"] / got["ray"]["trials_per_s"])
    print(f"{'system':8} {'rounds':>6} {'trials':>6} {'errors':>6} {'fit s (median)':>15} "
          f"{'trials/s median (min..max)':>28} {'init s':>7}")
    for name, got in rows.items():
        if not got:
            print(f"{name:8} FAILED in every round")
            continue
        rate = [r["trials_per_s"] for r in got]
        print(f"{name:8} {len(got):>6} {got[0]['trials']:>6} {sum(r['errors'] for r in got):>6} "
              f"{statistics.median(r['fit_s'] for r in got):>15.2f} "
              f"{statistics.median(rate):>10.1f} ({min(rate):.1f}..{max(rate):.1f})"
              f"{statistics.median(r['init_s'] for r in got):>9.2f}")
    if ratios:
        print(f"hpcray / Ray trials per second, median of {len(ratios)} rounds: "
              f"{statistics.median(ratios):.1f}x ({min(ratios):.1f}..{max(ratios):.1f})")
    return 0 if all(rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
