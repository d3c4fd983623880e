"""CuPy, wrapped once: its arrays as device buffers of objects (export, rebuild, CUDA IPC,
staged copies) and as the arrays of "nccl" collective groups."""

from __future__ import annotations

import ctypes
import threading

import cupy
import numpy as np

from . import registry as device
from .arrays import ArrayLibrary, DeviceArray
from .registry import Backend, DeviceBuffer

_H2D, _D2H, _D2D = 1, 2, 3
_LAZY_PEER_ACCESS = 1
_BUFFER_ID = 7  # CU_POINTER_ATTRIBUTE_BUFFER_ID


def pinned(nbytes: int) -> np.ndarray:
    """Page-locked host memory (copies to and from the device run at full speed)."""
    return np.frombuffer(cupy.cuda.alloc_pinned_memory(max(nbytes, 1)), np.uint8, nbytes)


def _copy_sync(dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
    cupy.cuda.runtime.memcpyAsync(dst, src, nbytes, kind, stream)
    cupy.cuda.runtime.streamSynchronize(stream)


class _Upload:
    """Host-to-device copies of received chunks, with a ring of reusable host slots."""

    def __init__(self, backend: CuPyBackend, dst: DeviceBuffer, slots: int):
        self.backend, self.dst = backend, dst
        self.stream = backend.stream()
        self.events: list = [None] * slots

    def ready(self, slot: int) -> None:
        event = self.events[slot]
        if event is not None:
            event.synchronize()

    def put(self, slot: int, offset: int, host: np.ndarray) -> None:
        cupy.cuda.runtime.memcpyAsync(self.dst.ptr + offset, host.ctypes.data, host.nbytes, _H2D,
                                      self.stream.ptr)
        event = cupy.cuda.Event(disable_timing=True)
        event.record(self.stream)
        self.events[slot] = event

    def finish(self) -> None:
        self.stream.synchronize()


def _nccl():
    """cupy.cuda.nccl where NCCL is usable, else None."""
    try:
        from cupy.cuda import nccl
    except ImportError:
        return None
    return nccl if getattr(nccl, "available", True) and hasattr(nccl, "NcclCommunicator") else None


class CuPyBackend(Backend):
    name = "cupy"

    def __init__(self) -> None:
        self.paths = ("ipc", "mpi", "nccl") if _nccl() is not None else ("ipc", "mpi")
        self._streams = threading.local()
        self._libcuda = None

    def available(self) -> bool:
        return device.has_gpu()

    def stream(self):
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = cupy.cuda.Stream(non_blocking=True)
        return stream

    # -- values ------------------------------------------------------------------------------
    def export(self, array) -> tuple[DeviceBuffer, tuple]:
        meta = (array.shape, array.dtype.str)
        if not array.flags.c_contiguous:
            array = cupy.ascontiguousarray(array)  # (which would make a 0-d array 1-d)
        return DeviceBuffer(self, array, array.data.ptr, array.nbytes), meta

    def rebuild(self, buf: DeviceBuffer, meta: tuple):
        shape, dtype = meta
        owner = buf.owner
        if owner.shape == tuple(shape) and owner.dtype.str == dtype:
            return owner
        return owner.reshape(-1).view(cupy.uint8).view(np.dtype(dtype)).reshape(shape)

    def to_numpy(self, buf: DeviceBuffer, meta: tuple):
        return cupy.asnumpy(self.rebuild(buf, meta))

    def from_host(self, data, meta: tuple):
        shape, dtype = meta
        return cupy.asarray(data).view(np.dtype(dtype)).reshape(shape)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        array = cupy.empty(nbytes, dtype=cupy.uint8)
        return DeviceBuffer(self, array, array.data.ptr, nbytes)

    def synchronize(self) -> None:
        cupy.cuda.runtime.deviceSynchronize()

    def copy_ptr(self, dst: int, src: int, nbytes: int) -> None:
        if nbytes:
            stream = self.stream()
            cupy.cuda.runtime.memcpyAsync(dst, src, nbytes, _D2D, stream.ptr)
            stream.synchronize()

    def fence(self):
        # the legacy default stream waits for all earlier work on blocking streams (CuPy's
        # default stream and Stream() are blocking); work on non_blocking streams is not covered
        event = cupy.cuda.Event(disable_timing=True)
        event.record(cupy.cuda.Stream.null)
        return event

    def ipc_wrap(self, base: int, offset: int, nbytes: int, keep) -> DeviceBuffer:
        memory = cupy.cuda.UnownedMemory(base + offset, nbytes, keep,
                                         cupy.cuda.runtime.getDevice())
        array = cupy.ndarray((nbytes,), cupy.uint8, cupy.cuda.MemoryPointer(memory, 0))
        return DeviceBuffer(self, array, base + offset, nbytes)

    def mpi_view(self, buf: DeviceBuffer):
        """What MPI sends or receives into (a CUDA-aware MPI reads the device pointer)."""
        return buf.owner.reshape(-1).view(cupy.uint8)

    # -- CUDA IPC ----------------------------------------------------------------------------
    def _driver(self):
        if self._libcuda is None:
            lib = ctypes.CDLL("libcuda.so.1")
            lib.cuMemGetAddressRange_v2.restype = ctypes.c_int
            lib.cuMemGetAddressRange_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64),
                                                    ctypes.POINTER(ctypes.c_size_t),
                                                    ctypes.c_uint64]
            lib.cuPointerGetAttribute.restype = ctypes.c_int
            lib.cuPointerGetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
            self._libcuda = lib
        return self._libcuda

    def _allocation_base(self, ptr: int) -> int:
        base, size = ctypes.c_uint64(), ctypes.c_size_t()
        status = self._driver().cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size),
                                                        ptr)
        if status != 0:
            raise RuntimeError(f"cuMemGetAddressRange failed with CUresult {status}")
        return base.value

    def _buffer_id(self, ptr: int) -> int | None:
        """The driver's id of the allocation at ptr, unique for this process's lifetime."""
        value = ctypes.c_ulonglong()
        status = self._driver().cuPointerGetAttribute(ctypes.byref(value), _BUFFER_ID, ptr)
        return value.value if status == 0 else None

    def ipc_export(self, buf: DeviceBuffer) -> tuple[bytes, int, int | None]:
        """(handle of the whole allocation holding buf, buf's offset in it, the allocation's
        id, by which importers cache opened handles; None where the driver gives none)."""
        # the driver API needs the device's context current in this (progress) thread
        cupy.cuda.runtime.setDevice(buf.owner.device.id)
        cupy.cuda.runtime.free(0)
        if not buf.nbytes:
            return bytes(cupy.cuda.runtime.ipcGetMemHandle(buf.ptr)), 0, None
        base = self._allocation_base(buf.ptr)
        return (bytes(cupy.cuda.runtime.ipcGetMemHandle(base)), buf.ptr - base,
                self._buffer_id(base))

    def ipc_open(self, handle: bytes) -> int:
        return cupy.cuda.runtime.ipcOpenMemHandle(handle, _LAZY_PEER_ACCESS)

    def ipc_close(self, base: int) -> None:
        cupy.cuda.runtime.ipcCloseMemHandle(base)

    # -- NCCL point to point ------------------------------------------------------------------
    def nccl_id(self):
        return _nccl().get_unique_id()

    def nccl_comm(self, uid, rank: int):
        return _nccl().NcclCommunicator(2, uid, rank)

    def nccl_op(self, comm, op: str, buf: DeviceBuffer) -> None:
        nccl, stream = _nccl(), self.stream()
        # a channel's rank 0 sends to rank 1
        call, peer = (comm.send, 1) if op == "send" else (comm.recv, 0)
        call(buf.ptr, buf.nbytes, getattr(nccl, "NCCL_UINT8", 1), peer, stream.ptr)
        stream.synchronize()

    # -- host staging ------------------------------------------------------------------------
    def pinned(self, nbytes: int) -> np.ndarray:
        return pinned(nbytes)

    def stage_out(self, buf: DeviceBuffer, host: np.ndarray, chunk: int):
        """Copies buf to host in chunks, all queued at once; yields (offset, size) as each lands."""
        stream = self.stream()
        queued = []
        for offset in range(0, buf.nbytes, chunk):
            size = min(chunk, buf.nbytes - offset)
            cupy.cuda.runtime.memcpyAsync(host.ctypes.data + offset, buf.ptr + offset, size,
                                          _D2H, stream.ptr)
            event = cupy.cuda.Event(disable_timing=True)
            event.record(stream)
            queued.append((offset, size, event))
        for offset, size, event in queued:
            event.synchronize()
            yield offset, size

    def uploader(self, dst: DeviceBuffer, slots: int) -> _Upload:
        return _Upload(self, dst, slots)


class CuPyArrays(ArrayLibrary):
    """CuPy arrays in "nccl" collective groups."""

    def wrap(self, x, writable: bool) -> DeviceArray:
        a, writeback = x, None
        if not x.flags.c_contiguous:
            a = cupy.ascontiguousarray(x)
            if writable:
                def writeback():
                    x[...] = a
        return DeviceArray(self, a, a.data.ptr, np.dtype(a.dtype), tuple(a.shape), a.device.id,
                           writeback)

    def stream(self, d: DeviceArray) -> int:
        return cupy.cuda.get_current_stream().ptr

    def download(self, d: DeviceArray, host: np.ndarray) -> None:
        _copy_sync(host.ctypes.data, d.ptr, d.nbytes, _D2H, self.stream(d))

    def divide(self, d: DeviceArray, n: int) -> None:
        d.array /= d.array.dtype.type(n)
        cupy.cuda.get_current_stream().synchronize()

    def upload(self, d: DeviceArray, host: np.ndarray) -> None:
        _copy_sync(d.ptr, host.ctypes.data, d.nbytes, _H2D, self.stream(d))

    def pinned(self, nbytes: int) -> np.ndarray:
        return pinned(nbytes)


ARRAYS = CuPyArrays()
