"""Moving device buffers between ranks: path choice, then CUDA IPC, CUDA-aware MPI or
host staging through pinned buffers.

The sender describes each buffer in the OBJDATA message and posts whatever data the path
needs right behind it, never waiting on the receiver (so two ranks sending to each other
cannot deadlock); the receiver turns each description back into local device memory.
"""

from __future__ import annotations

import itertools
import sys
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass

from ..core.protocol import RELEASE
from . import registry as device
from .p2p import RECV_TIMEOUT, Channel
from .registry import DeviceBuffer, HostCopy

PATHS = ("ipc", "mpi", "nccl", "staged")  # "empty" (no bytes to move) needs no path
RING_SLOTS = 4
OPEN_HANDLES = 64
PINNED_CACHE = 1 << 30


@dataclass(frozen=True)
class Where:
    """What path choice needs to know about a rank."""

    node_id: str
    gpu: str          # uuid (or id) of the rank's own GPU; "" without one
    cuda_mpi: bool


def where(info) -> Where:
    """Where of a RankInfo."""
    return Where(info.node_id, info.gpu_identity(), bool(info.cuda_mpi))


def choose_path(src: Where, dst: Where, paths: tuple[str, ...], host_memory: bool = False,
                forced: str = "auto") -> str:
    """The transfer path for a device buffer from src to dst.

    ``paths`` are those the array library offers besides staging; ``host_memory`` says its
    memory is host memory (so any MPI may read it). Same node: CUDA IPC. Elsewhere:
    CUDA-aware MPI where both ranks' MPI takes device pointers; NCCL between distinct GPUs;
    else host staging. A receiver without a GPU always gets host bytes (staged).
    ``forced`` (HPCRAY_GPU_TRANSPORT) picks a path, falling back to staging where it
    cannot run; NCCL is never used between ranks sharing one GPU (NCCL refuses).
    """
    if forced not in ("auto", *PATHS):
        raise ValueError(f"HPCRAY_GPU_TRANSPORT={forced!r}: choose auto, {', '.join(PATHS)}")
    if not dst.gpu:
        return "staged"
    same_node = src.node_id == dst.node_id
    possible = {
        "ipc": "ipc" in paths and same_node and bool(src.gpu),
        "mpi": "mpi" in paths and (host_memory or (src.cuda_mpi and dst.cuda_mpi)),
        "nccl": "nccl" in paths and bool(src.gpu) and src.gpu != dst.gpu,
        "staged": True,
    }
    if forced != "auto":
        return forced if possible[forced] else "staged"
    return next(path for path in PATHS if possible[path])


class _Mapping:
    """An opened IPC handle and how many live arrays map it."""

    __slots__ = ("backend", "base", "users")

    def __init__(self, backend, base: int):
        self.backend, self.base, self.users = backend, base, 0

    def close(self) -> None:
        self.backend.ipc_close(self.base)


class _Lease:
    """Owned by a mapped import's array: when the array and its views are freed, the owner
    may unpin its export (queued here; flush() sends it from the progress loop)."""

    __slots__ = ("__weakref__", "mapping", "nbytes", "origin", "queue", "src", "token")

    def __init__(self, queue: deque, src: int, token: int, mapping: _Mapping, origin: tuple,
                 nbytes: int):
        self.queue, self.src, self.token, self.mapping = queue, src, token, mapping
        self.origin, self.nbytes = origin, nbytes

    def __del__(self) -> None:
        self.queue.append((self.src, self.token, self.mapping))


class DeviceTransfers:
    """One rank's side of device transfers: exports awaiting release, opened IPC handles,
    pinned staging buffers, and a log of received transfers."""

    def __init__(self, transport, ranks, config):
        self.transport = transport
        self.rank = transport.rank
        self.ranks = ranks
        self.forced = config.gpu_transport
        self.chunk = max(int(config.staging_chunk), 1 << 16)
        self.tokens = itertools.count(1)
        self.pins: dict[int, DeviceBuffer] = {}
        self.opened: OrderedDict[tuple, _Mapping] = OrderedDict()
        self.released: deque = deque()  # (src, token, mapping) of freed mapped imports
        self.leases: weakref.WeakSet = weakref.WeakSet()  # of live mapped imports
        self.fencing: list[tuple] = []  # freed imports whose readers may still be queued
        self.map_shared = bool(config.ipc_map)
        self.own_gpu = where(ranks[self.rank]).gpu
        self.staging: list[tuple[list, object]] = []
        self.pinned_free: list = []
        self.ring: dict[str, list] = {}
        self.channels: dict[tuple, Channel] = {}  # ("to" | "from", peer rank) -> NCCL channel
        self.log: deque = deque(maxlen=1000)  # (path, nbytes, seconds) of each receive
        self.ipc_failed = False
        self.phases: dict[str, float] = {}  # where the current receive spent its time
        self.exports: deque = deque(maxlen=1000)  # seconds each IPC export took
        choose_path(Where("", "", False), Where("", "", False), (), forced=self.forced)

    # -- sender ------------------------------------------------------------------------------
    def path_to(self, dest: int, buf: DeviceBuffer) -> str:
        backend = buf.backend
        return choose_path(where(self.ranks[self.rank]), where(self.ranks[dest]), backend.paths,
                           backend.host_memory, self.forced)

    def describe(self, dest: int, buf) -> tuple:
        """The wire description of buf for dest (pins buf until an IPC importer releases it)."""
        if type(buf) is HostCopy:
            return ("host", buf.name, buf.nbytes)
        if not buf.nbytes:
            return ("empty", buf.backend.name)
        path = self.path_to(dest, buf)
        name = buf.backend.name
        if path == "ipc":
            origin = self._mapped_origin(buf)
            if origin is None:  # memory of this rank's own
                try:
                    began = time.perf_counter()
                    handle, offset, alloc_id = buf.backend.ipc_export(buf)
                    self.exports.append(time.perf_counter() - began)
                except Exception as exc:  # noqa: BLE001 - any CUDA error: stage through the host
                    if not self.ipc_failed:
                        print(f"hpcray: rank {self.rank}: CUDA IPC export failed ({exc}); "
                              "device arrays from this rank go through host memory",
                              file=sys.stderr)
                    self.ipc_failed = True
                    return ("staged", name, buf.nbytes, self.chunk)
                origin = (self.rank, handle, offset, alloc_id)
            # a mapped import passes on its owner's handle; pinning it here keeps the owner's
            # export pinned until dest is done too
            token = next(self.tokens)
            self.pins[token] = buf
            return ("ipc", name, buf.nbytes, token, origin)
        if path == "staged":
            return ("staged", name, buf.nbytes, self.chunk)
        if path == "nccl":
            uid = None
            if ("to", dest) not in self.channels:
                uid = buf.backend.nccl_id()
                self.channels[("to", dest)] = Channel(buf.backend, uid, 0,
                                                      f"hpcray-nccl-to-{dest}")
            return ("nccl", name, buf.nbytes, uid)
        return (path, name, buf.nbytes)

    def send(self, dest: int, buf, desc: tuple) -> list:
        """Posts the data desc announced (call under the transport lock, in buffer order)."""
        kind = desc[0]
        transport = self.transport
        if kind == "empty":
            return []
        if kind == "host":
            return [transport.isend_raw(dest, buf.data)]
        if kind == "mpi":
            return [transport.isend_raw(dest, buf.backend.mpi_view(buf))]
        if kind == "nccl":
            self.channels[("to", dest)].submit("send", buf)
            return []
        if kind == "staged":
            host = self._pinned(buf.backend, buf.nbytes)
            reqs = [transport.isend_raw(dest, host[offset:offset + size])
                    for offset, size in buf.backend.stage_out(buf, host, desc[3])]
            self.staging.append((reqs, host))
            return reqs
        return []

    def release(self, tokens: list[int]) -> None:
        """An importer is done reading these exports."""
        for token in tokens:
            self.pins.pop(token, None)

    def _pinned(self, backend, nbytes: int):
        self._reclaim()
        for i, host in enumerate(self.pinned_free):
            if nbytes <= host.nbytes <= 2 * nbytes + (1 << 20):
                del self.pinned_free[i]
                return host[:nbytes]
        return backend.pinned(nbytes)

    def _reclaim(self) -> None:
        from mpi4py import MPI

        still = []
        for reqs, host in self.staging:
            if MPI.Request.Testall(reqs):
                if sum(b.nbytes for b in self.pinned_free) + host.nbytes <= PINNED_CACHE:
                    self.pinned_free.append(host)
            else:
                still.append((reqs, host))
        self.staging = still

    # -- receiver ----------------------------------------------------------------------------
    def receive(self, src: int, desc: tuple):
        """Local memory (DeviceBuffer, or HostCopy without a GPU) for one described buffer."""
        start = self.started = time.perf_counter()
        kind, name = desc[0], desc[1]
        if kind == "host":
            entry = HostCopy(name, self._recv_host(src, desc[2], desc[2]))
        elif kind == "empty":
            backend = device.backend(name)
            entry = (backend.alloc(0) if device.has_gpu() and backend.available()
                     else HostCopy(name, self.transport.pool.take(0)))
        elif kind == "ipc":
            entry = self._recv_ipc(src, device.backend(name), *desc[2:])
        elif kind == "mpi":
            backend = device.backend(name)
            entry = backend.alloc(desc[2])
            self.transport.recv_raw(src, backend.mpi_view(entry))
        elif kind == "staged":
            entry = self._recv_staged(src, name, desc[2], desc[3])
        elif kind == "nccl":
            entry = self._recv_nccl(src, device.backend(name), desc[2], desc[3])
        else:
            raise ValueError(f"unknown device transfer {kind!r} from rank {src}")
        self.log.append((kind, entry.nbytes, time.perf_counter() - start, self.phases))
        self.phases = {}
        return entry

    def _recv_ipc(self, src: int, backend, nbytes: int, token: int,
                  origin: tuple) -> DeviceBuffer:
        """Maps (same GPU as the owner: no copy) or copies the exported memory."""
        owner, handle, offset, alloc_id = origin
        mapped = False
        try:
            mapping = self._open(owner, backend, handle, alloc_id)
            opened = time.perf_counter()
            if self.map_shared and where(self.ranks[owner]).gpu == self.own_gpu:
                lease = _Lease(self.released, src, token, mapping, origin, nbytes)
                out = backend.ipc_wrap(mapping.base, offset, nbytes, lease)
                self.leases.add(lease)
                mapping.users += 1
                mapped = True
                self.phases = {"open_s": opened - self.started,
                               "map_s": time.perf_counter() - opened}
                return out
            out = backend.alloc(nbytes)
            allocated = time.perf_counter()
            backend.copy_ptr(out.ptr, mapping.base + offset, nbytes)
            self.phases = {"open_s": opened - self.started, "alloc_s": allocated - opened,
                           "copy_s": time.perf_counter() - allocated}
            return out
        finally:
            if not mapped:
                self.transport.send(src, (RELEASE, [token]))

    def _open(self, owner: int, backend, handle: bytes, alloc_id) -> _Mapping:
        """The opened mapping of owner's allocation (cached; the least recently used unused
        ones are closed beyond OPEN_HANDLES)."""
        key = (owner, handle if alloc_id is None else alloc_id)
        mapping = self.opened.get(key)
        if mapping is not None:
            self.opened.move_to_end(key)
            return mapping
        mapping = self.opened[key] = _Mapping(backend, backend.ipc_open(handle))
        if len(self.opened) > OPEN_HANDLES:
            for old_key in [k for k, m in self.opened.items() if not m.users]:
                if len(self.opened) <= OPEN_HANDLES or old_key == key:
                    break
                self.opened.pop(old_key).close()
        return mapping

    def _mapped_origin(self, buf: DeviceBuffer) -> tuple | None:
        """The owner's (rank, handle, offset, allocation id) of buf if it lies in memory this
        rank maps (IPC memory cannot be exported again)."""
        if not self.leases:
            return None
        for lease in list(self.leases):
            owner, handle, offset, alloc_id = lease.origin
            start = lease.mapping.base + offset
            if start <= buf.ptr and buf.ptr + buf.nbytes <= start + lease.nbytes:
                return owner, handle, offset + buf.ptr - start, alloc_id
        return None

    def flush(self) -> None:
        """Tells owners that mapped imports are gone (their arrays were freed), once the work
        this rank queued on the device before then has finished reading them."""
        while self.released:
            src, token, mapping = self.released.popleft()
            self.fencing.append((src, token, mapping, mapping.backend.fence()))
        done: dict[int, list[int]] = {}
        still = []
        for src, token, mapping, fence in self.fencing:
            if fence is None or fence.done:
                mapping.users -= 1
                done.setdefault(src, []).append(token)
            else:
                still.append((src, token, mapping, fence))
        self.fencing = still
        for src, tokens in done.items():
            self.transport.send(src, (RELEASE, tokens))

    def _recv_nccl(self, src: int, backend, nbytes: int, uid) -> DeviceBuffer:
        key = ("from", src)
        if uid is not None:  # the sender's first transfer to this rank (or its channel anew)
            old = self.channels.pop(key, None)
            if old is not None:
                old.close()
            self.channels[key] = Channel(backend, uid, 1, f"hpcray-nccl-from-{src}")
        out = backend.alloc(nbytes)
        done = self.channels[key].submit("recv", out)
        if not done.wait(RECV_TIMEOUT):
            raise TimeoutError(f"NCCL receive of {nbytes} bytes from rank {src} did not "
                               f"finish in {RECV_TIMEOUT:.0f} s")
        if done.error is not None:
            raise done.error
        return out

    def _recv_host(self, src: int, nbytes: int, chunk: int):
        host = self.transport.pool.take(nbytes)
        for offset in range(0, nbytes, chunk):
            self.transport.recv_raw(src, host[offset:offset + min(chunk, nbytes - offset)])
        return host

    def _recv_staged(self, src: int, name: str, nbytes: int, chunk: int):
        backend = device.backend(name) if device.has_gpu() else None
        if backend is None or not backend.available():
            return HostCopy(name, self._recv_host(src, nbytes, chunk))
        out = backend.alloc(nbytes)
        ring = self.ring.get(name)
        if ring is None or ring[0].nbytes < chunk:
            ring = self.ring[name] = [backend.pinned(chunk) for _ in range(RING_SLOTS)]
        upload = backend.uploader(out, RING_SLOTS)
        for i, offset in enumerate(range(0, nbytes, chunk)):
            slot = i % RING_SLOTS
            upload.ready(slot)
            view = ring[slot][:min(chunk, nbytes - offset)]
            self.transport.recv_raw(src, view)
            upload.put(slot, offset, view)
        upload.finish()
        return out
