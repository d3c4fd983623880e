"""Data benchmark: hpcray.data vs Ray Data 2.60, side by side, alternating rounds.

    python benchmarks/data.py                      # defaults sized for a shared 2-core box
    python benchmarks/data.py --gib 4 --rows 2000000 --rounds 5   # the issue's sizes

Workloads (2 workers: ``hpcray.init(num_cpus=2)``, ``ray.init(num_cpus=2)``; 3 for train_ingest):
  stream_npy    .npy files -> read_numpy -> map_batches(normalize) -> iter_batches(1024): GB/s
  stream_hdf5   the same array as one HDF5 dataset (h5py's default contiguous layout) ->
                read_hdf5 (hpcray only: Ray has no HDF5 reader); baselines: np.load / h5py
                (65536-row slices) plus the same normalize and batching in one process with
                no runtime
  stream_hdf5_chunked  the same, the dataset stored in chunks of 4096 whole rows
  inference     a callable class holding a scikit-learn model, map_batches on 2 actors: rows/s
  shuffle       random_shuffle of an array -> materialize: GB/s
  groupby_mean  groupby(key).mean() over rows of (key, value): rows/s
  big           --big-gib of .npy files on disk -> map_batches -> iter_batches(1024) (0: skip):
                GB/s and the peak memory of the whole job (PSS summed over every process of
                the run, sampled by the parent), to show it stays flat while Ray Data spills
  train_ingest  TorchTrainer, 2 workers, each iterating get_dataset_shard("train") in torch
                batches of 1024 over the .npy data (a third CPU for the reads in both
                systems): samples/s over both workers, timed inside the loop
The parent imports neither system: every round runs ``python benchmarks/data.py --internal
hpcray`` and ``RAY_PYTHON benchmarks/data.py --internal ray`` (order alternating), each printing
one JSON line; the table has medians, [min-max] and hpcray/Ray ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RAY_PYTHON = "/work/rayvenv/bin/python"
TAG = "DATA_BENCH "
FILES = 8
HDF5_CHUNK_ROWS = 4096  # 4 MiB chunks of whole 256-float rows


def normalize(batch: dict) -> dict:
    x = batch["data"]
    return {"data": (x - 0.5) * 2.0}


class Model:
    """A scikit-learn model built once per actor."""

    def __init__(self, seed: int = 0):
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(seed)
        x = rng.normal(size=(2000, 16))
        self.model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))

    def __call__(self, batch: dict) -> dict:
        return {"pred": self.model.predict(batch["x"])}


def make_big(d: str, gib: float) -> None:
    """gib of float32 in 256 MiB .npy files, written a slice at a time (flat memory)."""
    import numpy as np

    os.makedirs(f"{d}/big", exist_ok=True)
    rows, cols = 2**18, 256  # 256 MiB a file
    rng = np.random.default_rng(1)
    for i in range(max(1, int(gib * 4))):
        arr = np.lib.format.open_memmap(f"{d}/big/part_{i:03d}.npy", mode="w+",
                                        dtype=np.float32, shape=(rows, cols))
        for s in range(0, rows, 2**15):
            arr[s:s + 2**15] = rng.random((2**15, cols), dtype=np.float32)
        arr.flush()
        del arr


def make_data(d: str, gib: float, rows: int, hdf5: bool = True) -> None:
    import h5py
    import numpy as np

    n_cols = 256
    total_rows = int(gib * 2**30 / (4 * n_cols))
    per = total_rows // FILES
    rng = np.random.default_rng(0)
    os.makedirs(f"{d}/npy", exist_ok=True)
    with contextlib.ExitStack() as files:
        sets = []
        if hdf5:  # the same rows as one contiguous and one chunked HDF5 dataset
            for name, chunks in (("data.h5", None), ("chunked.h5", (HDF5_CHUNK_ROWS, n_cols))):
                f = files.enter_context(h5py.File(f"{d}/{name}", "w"))
                sets.append(f.create_dataset("data", shape=(per * FILES, n_cols),
                                             dtype=np.float32, chunks=chunks))
        for i in range(FILES):
            block = rng.random((per, n_cols), dtype=np.float32)
            np.save(f"{d}/npy/part_{i:02d}.npy", block)
            for ds in sets:
                ds[i * per:(i + 1) * per] = block
    np.save(f"{d}/infer.npy", rng.normal(size=(rows, 16)))
    np.save(f"{d}/keys.npy", rng.integers(0, 1000, rows * 5))
    np.save(f"{d}/vals.npy", rng.normal(size=rows * 5))


def ingest_loop(config: dict) -> None:
    import time

    shard = config["shard"]("train")
    t = time.perf_counter()
    rows = 0
    for batch in shard.iter_torch_batches(batch_size=1024):
        rows += len(batch["data"])
    seconds = time.perf_counter() - t
    # a file per worker: Ray Train 2.60's Result.metrics is None without a checkpoint
    rank = config["context"]().get_world_rank()
    with open(os.path.join(config["out"], f"ingest_{rank}.json"), "w") as f:
        json.dump({"rows": rows, "seconds": seconds}, f)


def train_ingest(system: str, ds, workers: int, d: str) -> float:
    if system == "hpcray":
        from hpcray import train
        from hpcray.train import ScalingConfig
        from hpcray.train.torch import TorchTrainer
    else:
        from ray import train
        from ray.train import ScalingConfig
        from ray.train.torch import TorchTrainer
    out = tempfile.mkdtemp(dir=d)
    config = {"shard": train.get_dataset_shard, "context": train.get_context, "out": out}
    TorchTrainer(ingest_loop, train_loop_config=config,
                 scaling_config=ScalingConfig(num_workers=workers),
                 datasets={"train": ds}).fit()
    rates = []
    for i in range(workers):
        with open(os.path.join(out, f"ingest_{i}.json")) as f:
            m = json.load(f)
        rates.append(m["rows"] / m["seconds"])
    return sum(rates)


def drain(ds) -> int:
    n = 0
    for batch in ds.iter_batches(batch_size=1024):
        n += batch["data"].nbytes
    return n


def internal(system: str, d: str, workers: int, part: str) -> None:
    import numpy as np

    out = {}
    cpus = workers + 1 if part == "train" else workers  # the trainer's reads need a CPU
    if system == "hpcray":
        import hpcray as rt
        from hpcray import data
        from hpcray.data import DataContext

        rt.init(num_cpus=cpus)
    else:
        import ray as rt
        from ray import data
        from ray.data import DataContext

        rt.init(address="local", num_cpus=cpus, include_dashboard=False,
                log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False

    def timed(fn) -> tuple[float, object]:
        t = time.perf_counter()
        res = fn()
        return time.perf_counter() - t, res

    files = sorted(str(p) for p in Path(d, "npy").glob("*.npy"))
    if part == "big":
        big = sorted(str(p) for p in Path(d, "big").glob("*.npy"))
        sec, nbytes = timed(lambda: drain(data.read_numpy(big).map_batches(normalize)))
        print(TAG + json.dumps({"big": nbytes / sec / 1e9}), flush=True)
        rt.shutdown()
        return
    if part == "train":
        out["train_ingest"] = train_ingest(system, data.read_numpy(files), workers, d)
        print(TAG + json.dumps(out), flush=True)
        rt.shutdown()
        return
    sec, nbytes = timed(lambda: drain(data.read_numpy(files).map_batches(normalize)))
    out["stream_npy"] = nbytes / sec / 1e9
    if system == "hpcray":
        for key, name in (("stream_hdf5", "data.h5"), ("stream_hdf5_chunked", "chunked.h5")):
            sec, nbytes = timed(lambda name=name: drain(
                data.read_hdf5(f"{d}/{name}", "data").map_batches(normalize)))
            out[key] = nbytes / sec / 1e9

    x = np.load(f"{d}/infer.npy")
    ds = data.from_numpy(np.array_split(x, 16)).map_batches(lambda b: {"x": b["data"]})
    ds = ds.materialize()
    sec, n = timed(lambda: ds.map_batches(Model, concurrency=workers, batch_size=8192).count())
    out["inference"] = n / sec

    shuffle_src = data.read_numpy(files[: max(1, FILES // 2)]).materialize()
    size = sum(os.path.getsize(f) for f in files[: max(1, FILES // 2)])
    sec, _ = timed(lambda: shuffle_src.random_shuffle(seed=1).materialize())
    out["shuffle"] = size / sec / 1e9

    keys, vals = np.load(f"{d}/keys.npy"), np.load(f"{d}/vals.npy")
    gds = data.from_numpy(np.array_split(keys, 16)).zip(
        data.from_numpy(np.array_split(vals, 16))).rename_columns(["k", "v"]).materialize()
    sec, res = timed(lambda: gds.groupby("k").mean("v").take_all())
    out["groupby_mean"] = len(keys) / sec
    assert len(res) == len(np.unique(keys))
    print(TAG + json.dumps(out), flush=True)
    rt.shutdown()


def baseline(d: str) -> dict:
    """One process, no runtime: np.load / h5py, the same normalize, 1024-row batches."""
    import h5py
    import numpy as np

    out = {}
    files = sorted(Path(d, "npy").glob("*.npy"))
    t = time.perf_counter()
    n = 0
    for f in files:
        arr = np.load(f)
        for s in range(0, len(arr), 1024):
            n += normalize({"data": arr[s:s + 1024]})["data"].nbytes
    out["stream_npy"] = n / (time.perf_counter() - t) / 1e9
    for key, name in (("stream_hdf5", "data.h5"), ("stream_hdf5_chunked", "chunked.h5")):
        t = time.perf_counter()
        n = 0
        with h5py.File(f"{d}/{name}", "r") as h:
            ds = h["data"]
            step = 65536
            for s in range(0, ds.shape[0], step):
                arr = ds[s:s + step]
                for b in range(0, len(arr), 1024):
                    n += normalize({"data": arr[b:b + 1024]})["data"].nbytes
        out[key] = n / (time.perf_counter() - t) / 1e9
    return out


def _tree_pss(root) -> int:
    """Proportional set size of a process and all its descendants (shared memory, such as
    Ray's object store, counted once)."""
    import psutil

    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run(cmd: list[str], timeout: float, sample: bool = False) -> dict | None:
    """Runs one internal measurement; with sample, adds the run's peak memory (GiB)."""
    import threading

    import psutil

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    peak = [0]
    done = threading.Event()

    def sampler() -> None:
        root = psutil.Process(proc.pid)
        while not done.wait(0.25):
            try:
                peak[0] = max(peak[0], _tree_pss(root))
            except psutil.NoSuchProcess:
                return

    if sample:
        threading.Thread(target=sampler, daemon=True).start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        print(f"  timed out: {' '.join(cmd)}", file=sys.stderr)
        return None
    finally:
        done.set()
    for line in out.splitlines():
        if line.startswith(TAG):
            res = json.loads(line[len(TAG):])
            if sample:
                res["big_peak"] = peak[0] / 2**30
            return res
    print(f"  failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}", file=sys.stderr)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the streamed array")
    parser.add_argument("--rows", type=int, default=500_000,
                        help="inference rows (groupby: 5x as many)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON)
    parser.add_argument("--dir", help="where to make the data (default: a temporary folder)")
    parser.add_argument("--internal", choices=("hpcray", "ray"))
    parser.add_argument("--part", choices=("core", "train", "big"), default="core")
    parser.add_argument("--big-gib", type=float, default=0.0,
                        help="size of the bigger-than-the-budget stream (0: skip it)")
    parser.add_argument("--no-train", action="store_true", help="skip train_ingest")
    parser.add_argument("--no-core", action="store_true",
                        help="skip the core workloads (stream, inference, shuffle, groupby)")
    args = parser.parse_args()
    if args.internal:
        internal(args.internal, args.dir, args.workers, args.part)
        return 0
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    d = tmp.name
    print(f"making {args.gib:g} GiB of float32 (.npy x{FILES}"
          f"{'' if args.no_core else ', contiguous and chunked HDF5'}) and "
          f"{args.rows} inference rows in {d}", flush=True)
    make_data(d, args.gib, args.rows, hdf5=not args.no_core)
    if args.big_gib:
        make_big(d, args.big_gib)
    me = [sys.executable, str(Path(__file__).resolve()), "--dir", d, "--workers",
          str(args.workers), "--internal"]
    ray = [args.ray_python, str(Path(__file__).resolve()), "--dir", d, "--workers",
           str(args.workers), "--internal"]
    results: dict[str, list[dict]] = {"hpcray": [], "ray": [], "baseline": []}
    for r in range(args.rounds):
        order = [("hpcray", me), ("ray", ray)]
        for name, cmd in order if r % 2 == 0 else order[::-1]:
            res = {} if args.no_core else run([*cmd, name], 900)
            if res is not None and not args.no_train:
                res.update(run([*cmd, name, "--part", "train"], 900) or {})
            if res is not None and args.big_gib:
                res.update(run([*cmd, name, "--part", "big"], 1800, sample=True) or {})
            if res:
                results[name].append(res)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k}={v:.3g}"
                                                            for k, v in res.items()), flush=True)
        if not args.no_core:
            results["baseline"].append(baseline(d))
    units = {"stream_npy": "GB/s", "stream_hdf5": "GB/s", "stream_hdf5_chunked": "GB/s",
             "inference": "rows/s",
             "shuffle": "GB/s", "groupby_mean": "rows/s", "train_ingest": "rows/s",
             "big": "GB/s", "big_peak": "GiB"}

    def cell(name: str, key: str) -> tuple[str, float | None]:
        vals = [r[key] for r in results[name] if key in r]
        if not vals:
            return "-", None
        med = statistics.median(vals)
        return f"{med:.3g} [{min(vals):.3g}-{max(vals):.3g}]", med

    print(f"\n{'workload':20} {'unit':7} {'hpcray':24} {'Ray Data 2.60':24} "
          f"{'hpcray/Ray':10} {'1 process':24} {'hpcray/1 proc':13}")
    for key, unit in units.items():
        h, hm = cell("hpcray", key)
        y, ym = cell("ray", key)
        b, bm = cell("baseline", key)
        ratio = f"{hm / ym:.2f}x" if hm and ym else "-"
        if key == "big_peak":  # lower is better: Ray's peak over hpcray's
            ratio = f"{ym / hm:.2f}x less" if hm and ym else "-"
        bratio = f"{hm / bm:.2f}" if hm and bm else "-"
        print(f"{key:20} {unit:7} {h:24} {y:24} {ratio:10} {b:24} {bratio:13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
