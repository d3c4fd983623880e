"""Device arrays inside serialized values.

A CuPy array (or any registered type exposing ``__cuda_array_interface__``) is never
pickled: its memory rides next to the pickle as a ``DeviceBuffer``, the way numpy's
memory rides as an out-of-band buffer, and the pickle keeps only shape, dtype and the
buffer's index. ``transfer.py`` moves DeviceBuffers between ranks; a rank without a
device receives a ``HostCopy`` instead, which get() turns into numpy only when asked.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import os
import sys
import threading
from typing import Any

from ...exceptions import DeviceUnavailableError
from ..core import hooks
from ..core.context import current

_local = threading.local()
_backends: dict[str, Backend] = {}
_types: dict[type, Backend] = {}
_table: dict = {}  # type -> reducer, what serialize() consults for every value
_gpu = {"here": False}


def set_has_gpu(flag: bool) -> None:
    """Called once by the bootstrap: whether this rank was given a GPU."""
    _gpu["here"] = flag


def has_gpu() -> bool:
    return _gpu["here"]


class DeviceBuffer:
    """Contiguous device memory of one array in a serialized value; keeps its owner alive."""

    __slots__ = ("backend", "nbytes", "owner", "ptr")

    def __init__(self, backend: Backend, owner: Any, ptr: int, nbytes: int):
        self.backend, self.owner, self.ptr, self.nbytes = backend, owner, ptr, nbytes

    def copy(self) -> DeviceBuffer:
        return self.backend.copy(self)


class HostCopy:
    """The bytes of a device array, held in host memory by a rank without a device."""

    __slots__ = ("data", "name")

    def __init__(self, name: str, data):
        self.name, self.data = name, data   # name: the array library's backend

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def copy(self) -> HostCopy:
        return HostCopy(self.name, self.data.copy())


DEVICE_ENTRIES = (DeviceBuffer, HostCopy)


def is_device(buf: Any) -> bool:
    return type(buf) in DEVICE_ENTRIES


class Backend:
    """How one device array type is exported, rebuilt, copied and moved."""

    name = ""
    #: its memory is host memory, so any MPI may read it (the test stand-in)
    host_memory = False
    #: transfer paths this backend can run, besides host staging
    paths: tuple[str, ...] = ()

    def export(self, array) -> tuple[DeviceBuffer, tuple]:
        """(buffer over a contiguous version of array, rebuild metadata)."""
        raise NotImplementedError

    def rebuild(self, buf: DeviceBuffer, meta: tuple):
        raise NotImplementedError

    def to_numpy(self, buf: DeviceBuffer, meta: tuple):
        raise NotImplementedError

    def from_host(self, data, meta: tuple):
        raise NotImplementedError

    def alloc(self, nbytes: int) -> DeviceBuffer:
        raise NotImplementedError

    def copy(self, buf: DeviceBuffer) -> DeviceBuffer:
        out = self.alloc(buf.nbytes)
        self.copy_ptr(out.ptr, buf.ptr, buf.nbytes)
        return out

    def synchronize(self) -> None:
        """Waits for all work queued on this rank's device (producers finish before export)."""

    def copy_ptr(self, dst: int, src: int, nbytes: int) -> None:
        """Device-to-device copy, complete on return."""
        raise NotImplementedError

    def fence(self) -> Any:
        """Something whose ``done`` turns true once the work queued on this rank's device so
        far has finished (None: nothing runs asynchronously)."""
        return None

    def nccl_id(self) -> Any:
        """A new unique id for a two-rank point-to-point communicator."""
        raise NotImplementedError

    def nccl_comm(self, uid: Any, rank: int) -> Any:
        """Joins the communicator uid names as rank (blocks until the peer joins too)."""
        raise NotImplementedError

    def nccl_op(self, comm: Any, op: str, buf: DeviceBuffer) -> None:
        """Sends buf to the peer ("send") or receives into it ("recv"); complete on return."""
        raise NotImplementedError

    def ipc_wrap(self, base: int, offset: int, nbytes: int, keep: Any) -> DeviceBuffer:
        """An array over nbytes of opened IPC memory at base + offset, referencing keep for
        as long as it or any view of it lives."""
        raise NotImplementedError

    def available(self) -> bool:
        """Whether this rank can hold device memory of this kind."""
        return True


def register(kind: type, backend: Backend) -> None:
    """Makes ``kind`` (an array type) travel as device memory handled by ``backend``."""
    _backends[backend.name] = backend
    _types[kind] = backend
    _table[kind] = _reduce


def backend(name: str) -> Backend:
    if name not in _backends:
        with contextlib.suppress(ImportError):
            if name == "cupy":
                _register_cupy()
            else:
                load_plugins()
    found = _backends.get(name)
    if found is None:
        raise DeviceUnavailableError(f"device arrays of kind {name!r} arrived, but this rank "
                                     f"(pid {os.getpid()}) cannot load that library")
    return found


def load_plugins() -> None:
    """Imports the modules named in ``HPCRAY_DEVICE_PLUGINS`` (comma-separated); each registers
    its array types with ``register()``, as CuPy's support does here."""
    for name in os.environ.get("HPCRAY_DEVICE_PLUGINS", "").split(","):
        if name.strip():
            importlib.import_module(name.strip())


def _register_cupy() -> None:
    import cupy

    from .cupy import CuPyBackend

    register(cupy.ndarray, CuPyBackend())


def device_table() -> dict:
    """Reducers for the device array types known in this process (cupy once imported)."""
    if "cupy" in sys.modules and "cupy" not in _backends:
        with contextlib.suppress(ImportError):
            _register_cupy()
    return _table


def _reduce(array):
    backend = _types[type(array)]
    buf, meta = backend.export(array)
    collected = _local.collect
    collected.append(buf)
    _local.count += 1
    return _rebuild, (backend.name, _local.count - 1, meta)


@contextlib.contextmanager
def _setting(**values):
    """Sets thread-local state for the duration of a with block."""
    outer = {name: getattr(_local, name, None) for name in values}
    for name, value in values.items():
        setattr(_local, name, value)
    try:
        yield
    finally:
        for name, value in outer.items():
            setattr(_local, name, value)


def collecting(buffers: list):
    """While pickling: device buffers are appended to ``buffers`` (in pickling order)."""
    return _setting(collect=buffers, count=0)


def rebuilding(device: list):
    """While unpickling: the value's device entries, by index."""
    return _setting(device=device)


def host_copies(enabled: bool = True):
    """Within: device arrays are returned as numpy arrays (get(..., to_host=True))."""
    return _setting(to_host=enabled)


def split(buffers) -> tuple[list, list]:
    """(host buffers for pickle, device entries) of a serialized value's buffers."""
    host, device = [], []
    for buf in buffers:
        (device if type(buf) in DEVICE_ENTRIES else host).append(buf)
    return host, device


def _rebuild(name: str, index: int, meta: tuple):
    entry = _local.device[index]
    to_host = getattr(_local, "to_host", None)
    if type(entry) is HostCopy:
        if to_host:
            import numpy as np

            shape, dtype = meta[0], meta[1]
            return entry.data.view(np.dtype(dtype)).reshape(shape)
        if not has_gpu():
            raise DeviceUnavailableError(
                f"a {name} device array reached rank {current_rank()} on {_host()}, which has no "
                "GPU. Request one for the task or actor (num_gpus=...), pass numpy arrays "
                "(cupy.asnumpy), or ask for a host copy with hpcray.get(ref, to_host=True).")
        return backend(name).from_host(entry.data, meta)
    if to_host:
        return entry.backend.to_numpy(entry, meta)
    return entry.backend.rebuild(entry, meta)


def current_rank() -> int:
    runtime = current()
    return runtime.rank if runtime is not None else 0


@functools.cache
def _host() -> str:
    import socket

    return socket.gethostname()


# -- CUDA-aware MPI --------------------------------------------------------------------------
def cuda_aware_mpi() -> bool:
    """Whether the MPI library takes device pointers (MPIX_Query_cuda_support, at run time).

    HPCRAY_CUDA_AWARE_MPI=0/1 overrides. Never assumed: handing a device pointer to an MPI
    without CUDA support crashes the rank.
    """
    forced = os.environ.get("HPCRAY_CUDA_AWARE_MPI")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes", "on")
    query = _mpix_query()
    if query is None:
        return False
    try:
        return bool(query())
    except OSError:
        return False


def _mpix_query():
    """MPIX_Query_cuda_support from the loaded MPI library (a dlsym through mpi4py's module
    and what it links; no library search), or None where the library has none."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    for path in (None, MPI.__file__):
        try:
            fn = ctypes.CDLL(path).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = []
        return fn
    return None


def transfers(transport: Any, ranks: list, config: Any):
    """The rank's device transfer paths (core's hook for moving device buffers)."""
    from .transfer import DeviceTransfers

    return DeviceTransfers(transport, ranks, config)


hooks.devices = sys.modules[__name__]
