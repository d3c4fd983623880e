"""cupy.cuda.nccl's stand-in: communicators of any number of ranks (processes), with NCCL's
reduction semantics computed by numpy, on host memory posing as device memory (the test
suite's fake GPU). CALLS records what ran.

Members meet in a shared-memory file named by the unique id: each writes its input into its
slot and a sequence number, waits for every member's, computes the result from all slots
(every member computes the same), and marks the call read before the slots are reused.
"""

import ctypes
import mmap
import os
import time

import numpy as np

available = True
CALLS: list = []
_TYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64,
          6: np.float16, 7: np.float32, 8: np.float64}
_OPS = {0: np.add, 1: np.multiply, 2: np.maximum, 3: np.minimum}
_SLOT = 32 << 20          # bytes a member may contribute to one call
_HEADER = 4096            # [written seq, read seq] per member, int64 each


def get_version() -> int:
    return 22800


def get_unique_id() -> bytes:
    return os.urandom(128)


class NcclCommunicator:
    def __init__(self, ndev: int, comm_id, rank: int):
        raw = bytes(comm_id) if isinstance(comm_id, bytes) else bytes(b % 256 for b in comm_id)
        if len(raw) != 128 or not 0 <= rank < ndev:
            raise RuntimeError(f"bad NCCL communicator arguments ({ndev}, {rank})")
        self.ndev, self.rank, self.seq = ndev, rank, 0
        self.path = f"/dev/shm/hpcray-stand-in-nccl-{raw[:12].hex()}"
        size = _HEADER + ndev * _SLOT
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.flags = np.frombuffer(self.map, np.int64, 2 * ndev)
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}
        self.alive = True

    # -- the meeting -------------------------------------------------------------------------
    def _wait(self, row: int, seq: int) -> None:
        deadline = time.monotonic() + 120
        while (self.flags[row::2][: self.ndev] < seq).any():
            if time.monotonic() > deadline:
                raise RuntimeError("stand-in NCCL: a member did not arrive")
            time.sleep(0.0002)

    def _exchange(self, src: int, nbytes: int) -> list:
        """Every member's nbytes from src, in rank order (a copy each)."""
        assert self.alive, "communicator used after destroy/abort"
        assert nbytes <= _SLOT, "stand-in NCCL: call too large"
        self.seq += 1
        self._wait(1, self.seq - 1)  # everyone has read the previous call's slots
        start = _HEADER + self.rank * _SLOT
        ctypes.memmove(ctypes.addressof(ctypes.c_char.from_buffer(self.map, start)), src, nbytes)
        self.flags[2 * self.rank] = self.seq
        self._wait(0, self.seq)
        parts = [bytes(self.map[_HEADER + r * _SLOT:_HEADER + r * _SLOT + nbytes])
                 for r in range(self.ndev)]
        self.flags[2 * self.rank + 1] = self.seq
        return parts

    @staticmethod
    def _put(dst: int, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data)
        ctypes.memmove(dst, data.ctypes.data, data.nbytes)

    def _reduce(self, parts: list, dtype, op: int) -> np.ndarray:
        arrays = [np.frombuffer(p, dtype) for p in parts]
        if op == 4:  # ncclAvg
            total = arrays[0].copy()
            for a in arrays[1:]:
                total = total + a
            return (total / self.ndev).astype(dtype)
        out = arrays[0].copy()
        for a in arrays[1:]:
            out = _OPS[op](out, a)
        return out

    # -- collectives -------------------------------------------------------------------------
    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        CALLS.append("allReduce")
        dtype = np.dtype(_TYPES[datatype])
        parts = self._exchange(sendbuf, count * dtype.itemsize)
        self._put(recvbuf, self._reduce(parts, dtype, op))

    def reduce(self, sendbuf, recvbuf, count, datatype, op, root, stream):
        CALLS.append("reduce")
        dtype = np.dtype(_TYPES[datatype])
        parts = self._exchange(sendbuf, count * dtype.itemsize)
        if self.rank == root:
            self._put(recvbuf, self._reduce(parts, dtype, op))

    def broadcast(self, sendbuf, recvbuf, count, datatype, root, stream):
        CALLS.append("broadcast")
        dtype = np.dtype(_TYPES[datatype])
        parts = self._exchange(sendbuf, count * dtype.itemsize)
        self._put(recvbuf, np.frombuffer(parts[root], dtype))

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        CALLS.append("allGather")
        dtype = np.dtype(_TYPES[datatype])
        parts = self._exchange(sendbuf, count * dtype.itemsize)
        self._put(recvbuf, np.frombuffer(b"".join(parts), dtype))

    def reduceScatter(self, sendbuf, recvbuf, recvcount, datatype, op, stream):
        CALLS.append("reduceScatter")
        dtype = np.dtype(_TYPES[datatype])
        n = recvcount * dtype.itemsize
        parts = self._exchange(sendbuf, n * self.ndev)
        mine = [p[self.rank * n:(self.rank + 1) * n] for p in parts]
        self._put(recvbuf, self._reduce(mine, dtype, op))

    # -- point to point: a file per message, renamed into place, taken by the receiver -----
    def _mailbox(self, src: int, dst: int, n: int) -> str:
        return f"{self.path}-p2p-{src}-{dst}-{n}"

    def send(self, sendbuf, count, datatype, peer, stream):
        CALLS.append("send")
        n = self.sent[peer] = self.sent.get(peer, 0) + 1
        data = ctypes.string_at(sendbuf, count * np.dtype(_TYPES[datatype]).itemsize)
        path = self._mailbox(self.rank, peer, n)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.rename(path + ".tmp", path)

    def recv(self, recvbuf, count, datatype, peer, stream):
        CALLS.append("recv")
        n = self.received[peer] = self.received.get(peer, 0) + 1
        path = self._mailbox(peer, self.rank, n)
        deadline = time.monotonic() + 120
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"stand-in NCCL: nothing from rank {peer}")
            time.sleep(0.0005)
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        ctypes.memmove(recvbuf, data, min(len(data), count * np.dtype(_TYPES[datatype]).itemsize))

    def check_async_error(self) -> None:
        pass

    def abort(self) -> None:
        self._close()

    def destroy(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.alive:
            self.alive = False
            del self.flags
            self.map.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
