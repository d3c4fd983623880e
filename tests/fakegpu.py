"""A stand-in device for tests on machines without a GPU.

``FakeDeviceArray`` exposes ``__cuda_array_interface__`` over host memory, carved out of
shared-memory blocks the way CuPy's pool carves arrays out of cudaMalloc blocks. Its IPC
handle names a whole block (the file under /dev/shm), so (handle, offset) bookkeeping,
handle caching and the exporter's pinning run exactly as with CUDA IPC. Only tests use it.

It registers itself as a device backend (kind "fake") and as an array library of the "nccl"
collective backend when imported; ranks that receive fake arrays without having imported it
load it through ``HPCRAY_DEVICE_PLUGINS=fakegpu`` (tests/conftest.py sets it).
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import threading
import uuid
import weakref

import numpy as np

from hpcray._private.device import registry as device
from hpcray._private.device.arrays import ArrayLibrary, DeviceArray, register_library
from hpcray._private.device.registry import Backend, DeviceBuffer

BLOCK = 1 << 20
_ALIGN = 256
_ids = itertools.count()
_token = uuid.uuid4().hex[:8]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Block:
    """One 'cudaMalloc': a shared-memory file mapped into this process."""

    def __init__(self, size: int):
        self.serial = next(_ids)
        # a killed process leaves its files behind, and pids are reused: add a random token
        self.path = f"/dev/shm/hpcray-fakegpu-{os.getpid()}-{_token}-{self.serial}"
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.memory = np.frombuffer(self.map, np.uint8)
        self.ptr = self.memory.ctypes.data
        self.size, self.used = size, 0
        weakref.finalize(self, _unlink, self.path)


class _Mapped:
    """Another process's block, mapped here; keeps ``keep`` while any array uses it."""

    def __init__(self, memory: np.ndarray, keep):
        self.memory, self.keep = memory, keep
        self.ptr = memory.ctypes.data


class _Pool:
    """Sub-allocates arrays from blocks; a block is freed when its last array goes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.current: _Block | None = None
        self.blocks_made = 0

    def alloc(self, nbytes: int) -> tuple[_Block, int]:
        size = -(-max(nbytes, 1) // _ALIGN) * _ALIGN
        with self.lock:
            block = self.current
            if block is None or block.used + size > block.size:
                block = _Block(max(BLOCK, size))
                self.blocks_made += 1
                if size < BLOCK:
                    self.current = block
            offset = block.used
            block.used += size
            return block, offset


pool = _Pool()


class FakeDeviceArray:
    """A C-contiguous array in fake device memory (CuPy-like: ``.get()`` copies to numpy)."""

    def __init__(self, shape, dtype, block: _Block | None = None, offset: int = 0):
        dtype = np.dtype(dtype)
        shape = tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if block is None:
            block, offset = pool.alloc(nbytes)
        self._block = block
        self._host = block.memory[offset:offset + nbytes].view(dtype).reshape(shape)

    @property
    def shape(self) -> tuple:
        return self._host.shape

    @property
    def dtype(self) -> np.dtype:
        return self._host.dtype

    @property
    def nbytes(self) -> int:
        return self._host.nbytes

    @property
    def ptr(self) -> int:
        return self._host.ctypes.data

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "strides": None, "version": 3}

    def get(self) -> np.ndarray:
        """A numpy copy (what cupy.ndarray.get does)."""
        return self._host.copy()

    def fill_from(self, values) -> FakeDeviceArray:
        self._host[...] = values
        return self

    def view_as(self, shape, dtype) -> FakeDeviceArray:
        """Same memory, another shape and dtype."""
        out = FakeDeviceArray.__new__(FakeDeviceArray)
        out._block = self._block
        out._host = self._host.reshape(-1).view(np.uint8).view(np.dtype(dtype)).reshape(shape)
        return out

    def __repr__(self) -> str:
        return f"FakeDeviceArray(shape={self.shape}, dtype={self.dtype})"


def asarray(values) -> FakeDeviceArray:
    """A fake device copy of a numpy array (what cupy.asarray does)."""
    values = np.asarray(values, order="C")
    return FakeDeviceArray(values.shape, values.dtype).fill_from(values)


class _Upload:
    def __init__(self, dst: DeviceBuffer):
        self.dst = dst

    def ready(self, slot: int) -> None:
        pass

    def put(self, slot: int, offset: int, host: np.ndarray) -> None:
        ctypes.memmove(self.dst.ptr + offset, host.ctypes.data, host.nbytes)

    def finish(self) -> None:
        pass


class FakeBackend(Backend):
    name = "fake"
    paths = ("ipc", "mpi", "nccl")
    host_memory = True

    def __init__(self):
        self.opened: dict[int, tuple] = {}
        self.exports = 0

    def available(self) -> bool:
        return device.has_gpu()

    def export(self, array: FakeDeviceArray) -> tuple[DeviceBuffer, tuple]:
        return DeviceBuffer(self, array, array.ptr, array.nbytes), (array.shape, array.dtype.str)

    def rebuild(self, buf: DeviceBuffer, meta: tuple) -> FakeDeviceArray:
        shape, dtype = meta
        owner = buf.owner
        if owner.shape == tuple(shape) and owner.dtype.str == dtype:
            return owner
        return owner.view_as(shape, dtype)

    def to_numpy(self, buf: DeviceBuffer, meta: tuple) -> np.ndarray:
        return self.rebuild(buf, meta).get()

    def from_host(self, data, meta: tuple) -> FakeDeviceArray:
        shape, dtype = meta
        return asarray(np.asarray(data).view(np.dtype(dtype)).reshape(shape))

    def alloc(self, nbytes: int) -> DeviceBuffer:
        array = FakeDeviceArray((nbytes,), np.uint8)
        return DeviceBuffer(self, array, array.ptr, nbytes)

    def copy_ptr(self, dst: int, src: int, nbytes: int) -> None:
        ctypes.memmove(dst, src, nbytes)

    def mpi_view(self, buf: DeviceBuffer) -> FakeDeviceArray:
        return buf.owner.view_as((buf.nbytes,), np.uint8)

    def ipc_export(self, buf: DeviceBuffer) -> tuple[bytes, int, int]:
        block = buf.owner._block
        self.exports += 1
        return block.path.encode(), buf.ptr - block.ptr, block.serial

    def ipc_open(self, handle: bytes) -> int:
        fd = os.open(handle.decode(), os.O_RDWR)
        try:
            mapped = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        memory = np.frombuffer(mapped, np.uint8)
        base = memory.ctypes.data
        self.opened[base] = (mapped, memory)
        return base

    def ipc_wrap(self, base: int, offset: int, nbytes: int, keep) -> DeviceBuffer:
        array = FakeDeviceArray((nbytes,), np.uint8, _Mapped(self.opened[base][1], keep),
                                offset)
        return DeviceBuffer(self, array, base + offset, nbytes)

    def ipc_close(self, base: int) -> None:
        self.opened.pop(base, None)

    # a FIFO stands in for NCCL: opening it waits for the peer, as joining a communicator does,
    # and a write waits for the reader, as ncclSend waits for the matching ncclRecv
    def nccl_id(self) -> str:
        path = f"/dev/shm/hpcray-fakenccl-{os.getpid()}-{_token}-{next(_ids)}"
        os.mkfifo(path, 0o600)
        return path

    def nccl_comm(self, uid: str, rank: int):
        pipe = open(uid, "wb" if rank == 0 else "rb", buffering=0)  # noqa: SIM115 - kept open
        if rank == 1:
            _unlink(uid)
        return pipe

    def nccl_op(self, comm, op: str, buf: DeviceBuffer) -> None:
        view = memoryview(self.mpi_view(buf)._host)
        done = 0
        while done < buf.nbytes:
            moved = (comm.write if op == "send" else comm.readinto)(view[done:])
            if not moved:
                raise ConnectionError("the fake NCCL peer went away")
            done += moved

    def pinned(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, np.uint8)

    def stage_out(self, buf: DeviceBuffer, host: np.ndarray, chunk: int):
        for offset in range(0, buf.nbytes, chunk):
            size = min(chunk, buf.nbytes - offset)
            ctypes.memmove(host.ctypes.data + offset, buf.ptr + offset, size)
            yield offset, size

    def uploader(self, dst: DeviceBuffer, slots: int) -> _Upload:
        return _Upload(dst)


device.register(FakeDeviceArray, FakeBackend())


class FakeArrays(ArrayLibrary):
    """The "nccl" collective backend's view of fake device arrays."""

    def wrap(self, x, writable: bool) -> DeviceArray:
        return DeviceArray(self, x, x.ptr, x.dtype, x.shape, 0)

    def download(self, d: DeviceArray, host: np.ndarray) -> None:
        ctypes.memmove(host.ctypes.data, d.ptr, d.nbytes)

    def upload(self, d: DeviceArray, host: np.ndarray) -> None:
        ctypes.memmove(d.ptr, host.ctypes.data, d.nbytes)

    def divide(self, d: DeviceArray, n: int) -> None:
        host = np.frombuffer((ctypes.c_char * d.nbytes).from_address(d.ptr), d.dtype)
        host /= d.dtype.type(n)


register_library(FakeDeviceArray, FakeArrays())
