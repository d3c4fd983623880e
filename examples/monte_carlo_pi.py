"""Estimate pi by throwing random points at the unit square, in parallel tasks.

Run alone:      python examples/monte_carlo_pi.py   (hpcray.init() starts a local job)
On 3 MPI ranks: hpcray run -n 3 examples/monte_carlo_pi.py
            or: mpiexec -n 3 python examples/monte_carlo_pi.py
"""

import math
import time

import numpy as np

import hpcray

NUM_TASKS = 16
SAMPLES_PER_TASK = 2_000_000


@hpcray.remote
def count_inside(num_samples: int, seed: int) -> int:
    """How many of num_samples uniform points in [0, 1)^2 fall inside the unit circle."""
    rng = np.random.default_rng(seed)
    inside = 0
    for start in range(0, num_samples, 500_000):  # in chunks, to bound memory
        xy = rng.random((min(500_000, num_samples - start), 2))
        inside += int(np.count_nonzero(np.einsum("ij,ij->i", xy, xy) <= 1.0))
    return inside


def main() -> None:
    hpcray.init()
    start = time.perf_counter()
    refs = [count_inside.remote(SAMPLES_PER_TASK, seed) for seed in range(NUM_TASKS)]
    inside = sum(hpcray.get(refs))
    samples = NUM_TASKS * SAMPLES_PER_TASK
    pi = 4.0 * inside / samples
    elapsed = time.perf_counter() - start
    print(f"samples:  {samples:,} in {NUM_TASKS} tasks ({elapsed:.2f} s)")
    print(f"estimate: {pi:.6f}")
    print(f"error:    {abs(pi - math.pi):.6f} (expected about {1.64 / math.sqrt(samples):.6f})")


if __name__ == "__main__":
    main()
