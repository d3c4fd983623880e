"""CuPy arrays flowing between GPU actors that share one GPU, without leaving the device.

    hpcray run -n 3 examples/gpu_pipeline.py      # needs a GPU and the gpu extra

A producer actor makes batches on its GPU share (num_gpus=0.5), a consumer on the other half
normalizes them, and the driver checks every result against numpy. On one GPU the consumer
maps the producer's memory (CUDA IPC, no copy); on other GPUs or nodes hpcray picks another
path. Without CuPy or a GPU it says so and exits 0.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import hpcray


@hpcray.remote(num_gpus=0.5)
class Producer:
    def batch(self, seed: int, rows: int, cols: int):
        import cupy as cp

        return cp.random.default_rng(seed).standard_normal((rows, cols), dtype=cp.float32)


@hpcray.remote(num_gpus=0.5)
class Normalizer:
    def normalize(self, x):
        import cupy as cp

        # x may be the producer's memory: read it, never write it
        return (x - x.mean(axis=0)) / (x.std(axis=0) + cp.float32(1e-6))


def main() -> int:
    hpcray.init()  # worker ranks serve inside init; only the driver goes on
    try:
        import cupy as cp
    except ImportError:
        print("gpu_pipeline: CuPy is not installed (pip install hpcray[gpu]); skipped")
        return 0
    if hpcray.cluster_resources().get("GPU", 0) < 1:
        print("gpu_pipeline: this job has no GPU; skipped")
        return 0
    producer, normalizer = Producer.remote(), Normalizer.remote()
    start = time.perf_counter()
    batches = [producer.batch.remote(seed, 4096, 1024) for seed in range(8)]
    results = [normalizer.normalize.remote(b) for b in batches]
    worst = 0.0
    for ref, out in zip(batches, hpcray.get(results)):
        assert isinstance(out, cp.ndarray), type(out)
        x = hpcray.get(ref, to_host=True).astype(np.float64)
        expected = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
        worst = max(worst, float(np.abs(out.get() - expected).max()))
    seconds = time.perf_counter() - start
    print(f"8 batches of 16 MiB produced, normalized and checked in {seconds:.2f} s "
          f"on GPU {hpcray.get_gpu_ids()}; largest error {worst:.2e}")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
