"""A task that eats memory past the node's limit is ended by the memory monitor."""

import time

import numpy as np
from jobkit import emit

import hpcray

hpcray.init()


@hpcray.remote(max_retries=0)
def hog(step_mib, max_mib):
    chunks = []
    for _ in range(max_mib // step_mib):
        chunks.append(np.ones(step_mib * 2**20 // 8))  # written: resident
        time.sleep(0.05)
    return "survived"


@hpcray.remote
def square(x):
    return x * x


try:
    outcome = ["ok", hpcray.get(hog.remote(64, 6144), timeout=120)]
except Exception as exc:  # noqa: BLE001 - the test checks the kind and the text
    outcome = [type(exc).__name__, str(exc)]
emit({"hog": outcome, "after": hpcray.get(square.remote(9), timeout=60)})
