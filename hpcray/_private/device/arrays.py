"""Device arrays users pass to the "nccl" backend: CuPy arrays, CUDA torch tensors and any
registered array type, each seen through one small adapter per library.

Copies between device and host run on the library's current stream, so kernels queued
there before the call (the producer's) finish first, and are complete on return.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class DeviceArray:
    """A C-contiguous device array over the user's data; ``done()`` copies results back when
    the data could not be used in place (non-contiguous arrays, bfloat16 tensors)."""

    __slots__ = ("array", "device", "dtype", "lib", "nbytes", "ptr", "shape", "writeback")

    def __init__(self, lib: ArrayLibrary, array, ptr: int, dtype: np.dtype, shape: tuple,
                 device: int, writeback: Callable[[], None] | None = None):
        self.lib, self.array, self.ptr, self.dtype = lib, array, ptr, dtype
        self.shape, self.device, self.writeback = shape, device, writeback
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def like(self) -> np.ndarray:
        """A host stand-in of the same dtype and shape (no memory) for the header round."""
        return np.lib.stride_tricks.as_strided(np.empty(1, self.dtype), self.shape,
                                               (0,) * len(self.shape), writeable=False)

    def stream(self) -> int:
        """The library's current stream on the array's device."""
        return self.lib.stream(self)

    def download(self, host: np.ndarray) -> None:
        """Copies the array into host (C-contiguous, same bytes), after the queued kernels."""
        if self.nbytes:
            self.lib.download(self, host)

    def upload(self, host: np.ndarray) -> None:
        """Copies host into the array; complete on return."""
        if self.nbytes:
            self.lib.upload(self, host)

    def done(self) -> None:
        if self.writeback is not None:
            self.writeback()

    def divide(self, n: int) -> None:
        """Divides the (floating point) array by n in place, complete on return."""
        if self.nbytes:
            self.lib.divide(self, n)


class ArrayLibrary:
    """How one array library's device arrays are read, written and staged."""

    def wrap(self, x, writable: bool) -> DeviceArray:
        raise NotImplementedError

    def stream(self, d: DeviceArray) -> int:
        return 0

    def download(self, d: DeviceArray, host: np.ndarray) -> None:
        raise NotImplementedError

    def upload(self, d: DeviceArray, host: np.ndarray) -> None:
        raise NotImplementedError

    def pinned(self, nbytes: int) -> np.ndarray:
        """Page-locked host memory where the library has it (the copies then run at full speed)."""
        return np.empty(nbytes, np.uint8)

    def divide(self, d: DeviceArray, n: int) -> None:
        raise NotImplementedError


_registered: dict[type, ArrayLibrary] = {}


def register_library(kind: type, adapter: ArrayLibrary) -> None:
    """Makes arrays of ``kind`` usable in "nccl" groups through ``adapter`` (for array
    libraries beyond CuPy and torch, e.g. a test suite's stand-in device)."""
    _registered[kind] = adapter


def _library(x) -> ArrayLibrary | None:
    root = type(x).__module__.split(".")[0]
    if root == "cupy":
        from .cupy import ARRAYS

        return ARRAYS
    if root == "torch" and hasattr(x, "detach"):
        from .torch import ARRAYS

        return ARRAYS
    return _registered.get(type(x))


def as_device(x, writable: bool, what: str = "tensor") -> DeviceArray:
    """A DeviceArray over x (CuPy array, CUDA torch tensor, registered type); TypeError
    naming what to do instead for anything else."""
    lib = _library(x)
    if lib is None:
        kind = ("a numpy array" if isinstance(x, np.ndarray) else
                f"a {type(x).__module__}.{type(x).__name__}")
        raise TypeError(f"{what} is {kind}: backend 'nccl' moves device arrays (CuPy arrays, CUDA "
                        "torch tensors); use backend='mpi' for numpy arrays and CPU tensors")
    try:
        return lib.wrap(x, writable)
    except TypeError as exc:
        raise TypeError(f"{what} {exc}") from None
