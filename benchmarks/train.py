"""The digits classifier on 2 workers: hpcray's TorchTrainer against Ray Train's, same run.

    python benchmarks/train.py [--epochs 8] [--trials 3] [--ray-python /opt/rayvenv/bin/python]

The parent imports neither system. For each it starts ``python benchmarks/train.py
--internal SYSTEM`` as a fresh process (hpcray re-launches itself under mpiexec with 2
worker ranks; Ray starts its local cluster with num_cpus=2) and notes the wall-clock time
of the launch; ``--trials`` rounds of the three runs alternate, and the table shows
medians. The same training loop (examples/train_digits.py's model and data, no
checkpoints) reports, per epoch, the time of its first optimizer step and the epoch's
duration. Printed: launch to first training step (target: hpcray 5x faster) and the
steady-state step time, the median epoch after the first divided by its steps (target:
hpcray no slower than Ray). hpcray runs twice: as is, and with ``HPCRAY_PRELOAD`` naming
the modules the loop imports, so that the workers import them while the job starts.
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
TAG = "TRAIN_BENCH"
# what the loop imports: torch, DistributedDataParallel's torch._dynamo, the digits data
PRELOAD = "torch,torch._dynamo,sklearn.datasets,sklearn.model_selection"


def loop(config: dict) -> None:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    if config["system"] == "ray":
        from ray import train
        from ray.train.torch import prepare_data_loader, prepare_model
    else:
        from hpcray import train
        from hpcray.train.torch import prepare_data_loader, prepare_model
    sys.path.insert(0, config["examples"])
    from train_digits import datasets

    torch.manual_seed(0)
    torch.set_num_threads(1)
    train_set, _ = datasets()
    loader = prepare_data_loader(DataLoader(train_set, batch_size=32, shuffle=True))
    model = prepare_model(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first_step = None
    history = []  # written to a file by rank 0: Ray Train v2 keeps no metrics without checkpoints
    for epoch in range(config["epochs"]):
        start = time.perf_counter()
        for xb, yb in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            first_step = first_step or time.time()
        history.append({"epoch": epoch, "epoch_s": time.perf_counter() - start,
                        "steps": len(loader), "first_step_ts": first_step})
        if train.get_context().get_world_rank() == 0:
            Path(config["out"]).write_text(json.dumps(history))
        train.report({"epoch": epoch})


def run_system(system: str, epochs: int, storage: str) -> None:
    out = os.path.join(storage, "history.json")
    config = {"system": system, "epochs": epochs, "examples": str(REPO_ROOT / "examples"),
              "out": out}
    if system == "ray":
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    else:
        import hpcray as ray
        from hpcray.train import RunConfig, ScalingConfig
        from hpcray.train.torch import TorchTrainer

        ray.init(num_cpus=2)
    trainer = TorchTrainer(loop, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=2),
                           run_config=RunConfig(name=f"bench_{system}", storage_path=storage))
    trainer.fit()
    print(TAG, Path(out).read_text(), flush=True)


def measure(python: str, system: str, epochs: int, preload: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep
               + os.environ.get("PYTHONPATH", ""), HPCRAY_PRELOAD=preload)
    with tempfile.TemporaryDirectory() as storage:
        launched = time.time()
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--internal", system,
                               "--epochs", str(epochs), "--storage", storage],
                              check=False, capture_output=True, text=True, env=env, timeout=900)
    rows = next((json.loads(line[len(TAG):]) for line in proc.stdout.splitlines()
                 if line.startswith(TAG)), None)
    if rows is None:
        raise RuntimeError(f"{system} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    steady = [r["epoch_s"] / r["steps"] for r in rows[1:]] or [rows[0]["epoch_s"] /
                                                              rows[0]["steps"]]
    return {"first_step_s": rows[0]["first_step_ts"] - launched,
            "step_ms": 1e3 * statistics.median(steady), "steps_per_epoch": rows[0]["steps"]}


def _median(runs: list[dict]) -> dict | None:
    """Each measure's median over runs (None without runs)."""
    if not runs:
        return None
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--ray-python", default="/opt/rayvenv/bin/python")
    parser.add_argument("--trials", type=int, default=3, help="runs of each system")
    parser.add_argument("--internal", choices=["hpcray", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal:
        return run_system(args.internal, args.epochs, args.storage)
    runs: dict[str, list[dict]] = {"hpcray": [], "preload": [], "ray": []}
    for _ in range(max(args.trials, 1)):  # alternating: the machine's load drifts
        runs["hpcray"].append(measure(sys.executable, "hpcray", args.epochs))
        runs["preload"].append(measure(sys.executable, "hpcray", args.epochs, PRELOAD))
        if os.path.exists(args.ray_python):
            try:
                runs["ray"].append(measure(args.ray_python, "ray", args.epochs))
            except RuntimeError as exc:
                print(f"Ray Train run failed, hpcray alone below: {exc}", file=sys.stderr)
    ours, preloaded, ray = (_median(runs[k]) for k in ("hpcray", "preload", "ray"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"digits MLP, 2 workers, batch 32 ({ours['steps_per_epoch']} steps/epoch/worker), "
          f"{args.epochs} epochs; median of {max(args.trials, 1)} alternating runs of each; "
          f"{os.cpu_count()} cores, load average {load:.1f} at the end")
    for key, runs_of in runs.items():
        print(f"  {key} runs, launch to first step: "
              + ", ".join(f"{r['first_step_s']:.2f} s" for r in runs_of))
    print(f"preload: HPCRAY_PRELOAD={PRELOAD}")
    print("| row | hpcray | hpcray, preload | Ray Train | Ray / hpcray | Ray / hpcray, preload "
          "| target |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for key, label, unit, better in [("first_step_s", "launch to first training step", "s", 5.0),
                                     ("step_ms", "steady-state step time (median epoch)", "ms",
                                      1.0)]:
        theirs = f"{ray[key]:.3f} {unit}" if ray else "-"
        ratios = [ray[key] / run[key] if ray else None for run in (ours, preloaded)]
        cells = ["-" if r is None else f"{r:.2f}x" for r in ratios]
        target = f"hpcray {better:g}x faster" if better > 1 else "hpcray no slower"
        verdict = " ".join("" if r is None else ("PASS" if r >= better else "MISS")
                           for r in ratios)
        print(f"| {label} | {ours[key]:.3f} {unit} | {preloaded[key]:.3f} {unit} | {theirs} | "
              f"{cells[0]} | {cells[1]} | {target}: {verdict} |")


if __name__ == "__main__":
    main()
