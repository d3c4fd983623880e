"""Tune benchmark: trivial trials with ASHA, hpcray.tune vs Ray Tune, side by side.

    python benchmarks/tune.py                 # 200 hpcray trials, 40 Ray trials, 2 workers
    python benchmarks/tune.py --ray-trials 0  # hpcray only

Each trial reports 10 times; ASHA (max_t=10, grace_period=1, reduction_factor=4) stops the
weaker ones early, the same way in both systems. The parent process imports neither system: it
runs ``python benchmarks/tune.py --internal hpcray`` (which starts its own MPI job with
``hpcray.init(num_cpus=W)``) and ``RAY_PYTHON benchmarks/tune.py --internal ray``
(``ray.init(num_cpus=W)``), and compares trials per second of ``Tuner.fit()``.
"""

from __future__ import annotations

import argparse
import json
import os
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
        trial_function(report), param_space={"x": tune.uniform(0, 1)},
        tune_config=TuneConfig(metric="loss", mode="min", num_samples=trials,
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
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--ray-trials", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON)
    parser.add_argument("--internal", choices=("hpcray", "ray"))
    args = parser.parse_args()
    if args.internal:
        internal(args.internal, args.trials if args.internal == "hpcray" else args.ray_trials,
                 args.workers)
        return 0
    script = str(Path(__file__).resolve())
    common = ["--workers", str(args.workers), "--trials", str(args.trials),
              "--ray-trials", str(args.ray_trials)]
    rows = [run([sys.executable, script, "--internal", "hpcray", *common], 600)]
    if args.ray_trials and os.path.exists(args.ray_python):
        rows.append(run([args.ray_python, script, "--internal", "ray", *common], 1800))
    rows = [r for r in rows if r]
    print(f"{'system':8} {'trials':>6} {'reports':>7} {'errors':>6} {'fit s':>8} "
          f"{'trials/s':>9} {'init s':>7}")
    for r in rows:
        print(f"{r['system']:8} {r['trials']:>6} {r['reports']:>7} {r['errors']:>6} "
              f"{r['fit_s']:>8.2f} {r['trials_per_s']:>9.1f} {r['init_s']:>7.2f}")
    if len(rows) == 2:
        ratio = rows[0]["trials_per_s"] / rows[1]["trials_per_s"]
        print(f"hpcray / Ray trials per second: {ratio:.1f}x (target >= 50x): "
              f"{'PASS' if ratio >= 50 else 'MISS'}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
