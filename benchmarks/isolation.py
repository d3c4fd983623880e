"""Execution isolation: what executor processes and the node store buy, side by side.

    python benchmarks/isolation.py                  # 3 rounds: hpcray process, thread; Ray
    python benchmarks/isolation.py --rounds 1 --gib 1

Rows (each a median over rounds, with min..max):

* ``gil_ratio``: 8 CPU-bound pure-Python tasks on 1 worker rank with 2 CPUs, over the same on
  2 ranks with 1 CPU each (1.0 = the CPUs are used as well; the target is <= 1.15). Ray: one
  node with 2 CPUs (its workers are processes), shown for reference.
* ``get_same_node_ms``: a task on one worker reads a 1 GiB array another worker made (ms).
* ``driver_to_task_gbps``: a 3 GiB (``--gib``) driver array passed to a task (GB/s): the
  first such transfer of the job (fresh memory for both systems), then
  ``driver_to_task_again_gbps``: the same again (the stores' memory already allocated).

Every sub-run is a fresh job; warm-up (executor start, first call) is excluded for every
system alike.
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

REPO = Path(__file__).resolve().parents[1]
TAG = "ISOLATION-RESULT "
DEFAULT_RAY_PYTHON = "/work/rayvenv/bin/python"


def _work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def measure(rt, args: argparse.Namespace, part: str) -> dict:
    """Runs in the job's driver (rt: hpcray or ray)."""
    import numpy as np

    out: dict = {}
    if part == "gil":
        spin = rt.remote(_work)
        rt.get([spin.remote(1000) for _ in range(8)])  # warm: executors/workers started
        start = time.perf_counter()
        rt.get([spin.remote(args.work) for _ in range(8)])
        out["gil_s"] = time.perf_counter() - start
        return out

    @rt.remote
    def make(nbytes):
        return np.ones(nbytes, dtype=np.uint8)

    @rt.remote
    def read(ref_list):
        start = time.perf_counter()
        value = rt.get(ref_list[0])
        took = time.perf_counter() - start
        return [took, int(value[:: 1 << 20].sum())]

    @rt.remote
    def size(array):
        return array.nbytes

    spread = {"scheduling_strategy": "SPREAD"}
    rt.get(read.options(**spread).remote([make.remote(1 << 20)]))  # warm both paths
    ref = make.options(**spread).remote(1 << 30)
    rt.wait([ref], num_returns=1)
    took, _ = rt.get(read.options(**spread).remote([ref]))
    out["get_same_node_ms"] = took * 1000
    del ref
    big = np.ones(int(args.gib * (1 << 30)), dtype=np.uint8)
    rt.get(size.remote(np.ones(1 << 20, dtype=np.uint8)))
    for key in ("driver_to_task_gbps", "driver_to_task_again_gbps"):  # cold, then warm
        start = time.perf_counter()
        assert rt.get(size.remote(big)) == big.nbytes
        out[key] = big.nbytes / (time.perf_counter() - start) / 1e9
    return out


def internal(args: argparse.Namespace) -> int:
    if args.internal == "ray":
        import ray as rt

        rt.init(num_cpus=2, include_dashboard=False)
    else:
        sys.path.insert(0, str(REPO))
        import hpcray as rt

        rt.init()
    try:
        print(TAG + json.dumps(measure(rt, args, args.part)), flush=True)
    finally:
        rt.shutdown()
    return 0


def run(system: str, part: str, args: argparse.Namespace, ranks: int = 3,
        cpus: int = 1) -> dict:
    script = [str(Path(__file__).resolve()), "--internal", "ray" if system == "ray" else "hpcray",
              "--part", part, "--work", str(args.work), "--gib", str(args.gib)]
    env = dict(os.environ)
    if system == "ray":
        cmd = [args.ray_python, *script]
    else:
        env.update(HPCRAY_EXECUTION=system.split("-")[1], HPCRAY_CPUS_PER_RANK=str(cpus),
                   PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
        cmd = ["mpiexec", "-n", str(ranks), sys.executable, *script]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(TAG)]
    if not lines:
        print(f"[{system} {part}] failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
              file=sys.stderr)
        return {}
    return json.loads(lines[-1][len(TAG):])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gib", type=float, default=3.0, help="size of the driver's array (GiB)")
    p.add_argument("--work", type=int, default=3_000_000, help="loop count of a CPU-bound task")
    p.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON)
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--internal", choices=["hpcray", "ray"], help=argparse.SUPPRESS)
    p.add_argument("--part", default="objects", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.internal:
        return internal(args)
    systems = ["hpcray-process", "hpcray-thread"]
    if not args.skip_ray and Path(args.ray_python).exists():
        systems.append("ray")
    rows: dict[tuple[str, str], list[float]] = {}
    for rnd in range(args.rounds):
        order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
        for system in order:
            print(f"round {rnd + 1}: {system}", file=sys.stderr, flush=True)
            if system == "ray":
                got = run(system, "objects", args)
            else:
                wide = run(system, "gil", args, ranks=2, cpus=2)
                narrow = run(system, "gil", args, ranks=3, cpus=1)
                got = run(system, "objects", args)
                if wide and narrow:
                    got["gil_ratio"] = wide["gil_s"] / narrow["gil_s"]
            for key, value in got.items():
                if value is not None:
                    rows.setdefault((system, key), []).append(value)
    names = [("gil_ratio", "x, <= 1.15"), ("get_same_node_ms", "ms, < 5"),
             ("driver_to_task_gbps", "GB/s, >= 3"), ("driver_to_task_again_gbps", "GB/s")]
    header = f"{'row':22} {'target':12} " + " ".join(f"{s:>28}" for s in systems)
    print(header)
    print("-" * len(header))
    for name, target in names:
        cells = []
        for system in systems:
            values = rows.get((system, name), [])
            if not values:
                cells.append(f"{'-':>28}")
                continue
            med = statistics.median(values)
            cells.append(f"{med:>10.3g} ({min(values):.3g}..{max(values):.3g})".rjust(28))
        print(f"{name:22} {target:12} " + " ".join(cells))
    print(f"{args.rounds} round(s), medians (min..max); warm-up excluded for every system; "
          "Ray's gil_ratio is not measured (its workers are processes already)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
