"""A stand-in for the few parts of CuPy that hpcray.collective's NCCL path calls, over host
memory, so that a one-member NCCL group runs on machines without a GPU (tests only: the
jobs of tests/test_collective_gpu.py put this folder on PYTHONPATH).
"""

import numpy as np

from tests.stand_ins.cupy import cuda

uint8 = np.uint8


class ndarray:
    pass


class _Data:
    def __init__(self, host: np.ndarray):
        self.host = host
        self.ptr = host.ctypes.data


class _Scratch:
    def __init__(self, n: int, dtype):
        self.data = _Data(np.zeros(n, dtype))


def empty(n: int, dtype) -> _Scratch:
    return _Scratch(n, dtype)


__all__ = ["cuda", "empty", "ndarray", "uint8"]
