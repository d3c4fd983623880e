"""Device arrays users pass to the "nccl" backend: CuPy arrays, CUDA torch tensors and any
registered array type, each seen through one small adapter per library.

Copies between device and host run on the library's current stream, so kernels queued
there before the call (the producer's) finish first, and are complete on return.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_H2D, _D2H = 1, 2


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


class _CuPy(ArrayLibrary):
    def wrap(self, x, writable: bool) -> DeviceArray:
        import cupy

        a, writeback = x, None
        if not x.flags.c_contiguous:
            a = cupy.ascontiguousarray(x)
            if writable:
                def writeback():
                    x[...] = a
        return DeviceArray(self, a, a.data.ptr, np.dtype(a.dtype), tuple(a.shape), a.device.id,
                           writeback)

    def stream(self, d: DeviceArray) -> int:
        import cupy

        return cupy.cuda.get_current_stream().ptr

    def _copy(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        import cupy

        cupy.cuda.runtime.memcpyAsync(dst, src, nbytes, kind, stream)
        cupy.cuda.runtime.streamSynchronize(stream)

    def download(self, d: DeviceArray, host: np.ndarray) -> None:
        self._copy(host.ctypes.data, d.ptr, d.nbytes, _D2H, self.stream(d))

    def divide(self, d: DeviceArray, n: int) -> None:
        import cupy

        d.array /= d.array.dtype.type(n)
        cupy.cuda.get_current_stream().synchronize()

    def upload(self, d: DeviceArray, host: np.ndarray) -> None:
        self._copy(d.ptr, host.ctypes.data, d.nbytes, _H2D, self.stream(d))

    def pinned(self, nbytes: int) -> np.ndarray:
        import cupy

        return np.frombuffer(cupy.cuda.alloc_pinned_memory(max(nbytes, 1)), np.uint8, nbytes)


class _Torch(ArrayLibrary):
    def __init__(self) -> None:
        self._dtypes: dict = {}

    def wrap(self, x, writable: bool) -> DeviceArray:
        import torch

        t = x.detach()
        if t.device.type != "cuda":
            raise TypeError(f"is a torch tensor on {t.device}: backend 'nccl' moves CUDA tensors; "
                            "use backend='mpi' for CPU tensors, or move it with .cuda()")
        c = t
        if t.dtype == torch.bfloat16:
            c = t.float()  # numpy (and so the header and the host reductions) has no bfloat16
        elif not t.is_contiguous():
            c = t.contiguous()
        writeback = (lambda: t.copy_(c)) if writable and c is not t else None
        return DeviceArray(self, c, c.data_ptr(), self._numpy_dtype(c.dtype), tuple(c.shape),
                           c.device.index or 0, writeback)

    def _numpy_dtype(self, dtype) -> np.dtype:
        found = self._dtypes.get(dtype)
        if found is None:
            import torch

            try:
                found = self._dtypes[dtype] = torch.empty(0, dtype=dtype).numpy().dtype
            except TypeError:
                raise TypeError(f"torch dtype {dtype} has no numpy equivalent") from None
        return found

    def stream(self, d: DeviceArray) -> int:
        import torch

        return torch.cuda.current_stream(d.array.device).cuda_stream

    def _bytes(self, d: DeviceArray):
        import torch

        return d.array.reshape(-1).view(torch.uint8)

    def download(self, d: DeviceArray, host: np.ndarray) -> None:
        import torch

        torch.from_numpy(host.reshape(-1).view(np.uint8)).copy_(self._bytes(d), non_blocking=True)
        torch.cuda.current_stream(d.array.device).synchronize()

    def upload(self, d: DeviceArray, host: np.ndarray) -> None:
        import torch

        self._bytes(d).copy_(torch.from_numpy(host.reshape(-1).view(np.uint8)), non_blocking=True)
        torch.cuda.current_stream(d.array.device).synchronize()

    def divide(self, d: DeviceArray, n: int) -> None:
        import torch

        d.array.div_(n)
        torch.cuda.current_stream(d.array.device).synchronize()

    def pinned(self, nbytes: int) -> np.ndarray:
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()


_CUPY, _TORCH = _CuPy(), _Torch()
_registered: dict[type, ArrayLibrary] = {}


def register_library(kind: type, adapter: ArrayLibrary) -> None:
    """Makes arrays of ``kind`` usable in "nccl" groups through ``adapter`` (for array
    libraries beyond CuPy and torch, e.g. a test suite's stand-in device)."""
    _registered[kind] = adapter


def _library(x) -> ArrayLibrary | None:
    root = type(x).__module__.split(".")[0]
    if root == "cupy":
        return _CUPY
    if root == "torch" and hasattr(x, "detach"):
        return _TORCH
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
