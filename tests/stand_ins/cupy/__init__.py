"""A stand-in for the few parts of CuPy that hpcray calls, over host memory, so that its
CuPy paths run on machines without a GPU (tests only: the jobs of
tests/test_collective_gpu.py and tests/test_data_features.py put this folder on PYTHONPATH).

hpcray.collective's NCCL path uses ``empty`` and ``cuda``; hpcray.data's CuPy batches use
``asarray``, ``asnumpy`` and ``ndarray``, which here holds a private host copy and, like
CuPy's, refuses implicit conversion to numpy (``np.asarray(x)`` raises TypeError: use
``x.get()``), so a batch that left the "device" by accident fails. ``TRANSFERS`` counts the
copies each way.
"""

import numpy as np

from tests.stand_ins.cupy import cuda

uint8 = np.uint8
float32 = np.float32
float64 = np.float64
TRANSFERS = {"to_device": 0, "to_host": 0}


class ndarray:
    """A device array's stand-in: its data, its device, numpy's arithmetic."""

    def __init__(self, shape=(0,), dtype=float):
        self._data = np.zeros(shape, dtype)
        self.device = cuda.Device()

    @classmethod
    def _of(cls, data: np.ndarray) -> "ndarray":
        out = cls.__new__(cls)
        out._data = data
        out.device = cuda.Device()
        return out

    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    nbytes = property(lambda self: self._data.nbytes)

    def __len__(self) -> int:
        return len(self._data)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def get(self) -> np.ndarray:
        TRANSFERS["to_host"] += 1
        return self._data.copy()

    def __getitem__(self, key) -> "ndarray":
        return ndarray._of(self._data[key])

    def astype(self, dtype) -> "ndarray":
        return ndarray._of(self._data.astype(dtype))

    def sum(self, axis=None) -> "ndarray":
        return ndarray._of(np.asarray(self._data.sum(axis=axis)))

    def _op(self, other, fn):
        other = other._data if isinstance(other, ndarray) else other
        if isinstance(other, np.ndarray):
            raise TypeError("Unsupported type <class 'numpy.ndarray'>")  # as CuPy
        return ndarray._of(fn(self._data, other))

    def __add__(self, other):
        return self._op(other, np.add)

    def __sub__(self, other):
        return self._op(other, np.subtract)

    def __mul__(self, other):
        return self._op(other, np.multiply)

    def __truediv__(self, other):
        return self._op(other, np.true_divide)

    __radd__ = __add__
    __rmul__ = __mul__


def asarray(a, dtype=None) -> ndarray:
    """A device copy of a host array (an ndarray stays as it is, as in CuPy)."""
    if isinstance(a, ndarray):
        return a if dtype is None else a.astype(dtype)
    TRANSFERS["to_device"] += 1
    return ndarray._of(np.array(a, dtype=dtype))


def asnumpy(a) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


class _Data:
    def __init__(self, host: np.ndarray):
        self.host = host
        self.ptr = host.ctypes.data


class _Scratch:
    def __init__(self, n: int, dtype):
        self.data = _Data(np.zeros(n, dtype))


def empty(n: int, dtype) -> _Scratch:
    return _Scratch(n, dtype)


__all__ = ["TRANSFERS", "asarray", "asnumpy", "cuda", "empty", "float32", "float64",
           "ndarray", "uint8"]
