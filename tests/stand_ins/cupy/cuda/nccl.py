"""cupy.cuda.nccl's stand-in for a communicator of one rank: each collective copies its
input to its output, as NCCL does with one rank. CALLS records what ran."""

import ctypes

available = True
CALLS: list = []
_SIZES = {0: 1, 1: 1, 2: 4, 3: 4, 4: 8, 5: 8, 6: 2, 7: 4, 8: 8}


def get_version() -> int:
    return 22800


def get_unique_id() -> tuple:
    return tuple(range(-64, 64))


class NcclCommunicator:
    def __init__(self, ndev: int, comm_id: tuple, rank: int):
        if ndev != 1 or rank != 0 or len(comm_id) != 128:
            raise RuntimeError("the stand-in NCCL runs one-rank communicators only")
        self.alive = True

    def _copy(self, name: str, dst: int, src: int, count: int, datatype: int) -> None:
        assert self.alive, "communicator used after destroy/abort"
        CALLS.append(name)
        ctypes.memmove(dst, src, count * _SIZES[datatype])

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        assert op in (0, 1, 2, 3, 4)
        self._copy("allReduce", recvbuf, sendbuf, count, datatype)

    def reduce(self, sendbuf, recvbuf, count, datatype, op, root, stream):
        assert root == 0 and op in (0, 1, 2, 3, 4)
        self._copy("reduce", recvbuf, sendbuf, count, datatype)

    def broadcast(self, sendbuf, recvbuf, count, datatype, root, stream):
        assert root == 0
        self._copy("broadcast", recvbuf, sendbuf, count, datatype)

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        self._copy("allGather", recvbuf, sendbuf, count, datatype)

    def reduceScatter(self, sendbuf, recvbuf, recvcount, datatype, op, stream):
        self._copy("reduceScatter", recvbuf, sendbuf, recvcount, datatype)

    def check_async_error(self) -> None:
        pass

    def abort(self) -> None:
        self.alive = False

    def destroy(self) -> None:
        self.alive = False
