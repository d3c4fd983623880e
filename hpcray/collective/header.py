"""What members compare before a collective moves data: a small fixed-size header.

Pure numpy (no MPI). Every operation first gathers each member's header (and, when the
data is small, the data itself) so that mismatched calls fail with an error naming the
ranks on every member instead of corrupting memory or hanging.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .types import CollectiveError, ReduceOp

ALLREDUCE, REDUCE, BROADCAST, ALLGATHER, REDUCESCATTER, BARRIER, SEND = range(1, 8)
OP_NAMES = {ALLREDUCE: "allreduce", REDUCE: "reduce", BROADCAST: "broadcast",
            ALLGATHER: "allgather", REDUCESCATTER: "reducescatter", BARRIER: "barrier",
            SEND: "send"}
# header fields (int64 each)
KIND, SEQ, REDUCE_OP, ROOT, DTYPE, NDIM, NBYTES, BAD = range(8)
DIMS = 8                   # first of the shape's 8 slots
HEADER_WORDS = 16
HEADER_BYTES = HEADER_WORDS * 8
INLINE = 512               # data up to this size travels with the header: one round trip
SLOT = HEADER_BYTES + INLINE
MAX_DIMS = HEADER_WORDS - DIMS

# dtypes MPI reduces natively; others (float16, bool, complex min/max) reduce with numpy
_MPI_REDUCIBLE = {np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8,
                                        np.uint16, np.uint32, np.uint64, np.float32, np.float64)}
_COMPLEX = {np.dtype(np.complex64), np.dtype(np.complex128)}
_NARROW_INTS = {np.dtype(t) for t in (np.int8, np.int16, np.uint8, np.uint16)}


_CODES: dict[np.dtype, int] = {}


def dtype_code(dtype: np.dtype) -> int:
    code = _CODES.get(dtype)
    if code is None:
        code = _CODES[dtype] = int.from_bytes(dtype.str.encode().ljust(8, b"\0"), "little",
                                              signed=True)
    return code


def dtype_of(code: int) -> np.dtype:
    return np.dtype(int(code).to_bytes(8, "little", signed=True).rstrip(b"\0").decode())


def make_header(kind: int, seq: int, array: np.ndarray | None, reduce_op: int = -1,
                root: int = -1, bad: bool = False) -> np.ndarray:
    """The header of one call: operation, sequence number, reduce op, root, dtype, shape."""
    h = np.zeros(HEADER_WORDS, dtype=np.int64)
    h[KIND], h[SEQ], h[REDUCE_OP], h[ROOT], h[BAD] = kind, seq, reduce_op, root, bad
    if array is not None:
        shape = array.shape
        h[DTYPE] = dtype_code(array.dtype)
        h[NDIM] = len(shape)
        h[NBYTES] = array.nbytes
        if len(shape) <= MAX_DIMS:
            h[DIMS:DIMS + len(shape)] = shape
        else:
            h[DIMS:HEADER_WORDS - 1] = shape[:MAX_DIMS - 1]
            h[HEADER_WORDS - 1] = hash(tuple(shape[MAX_DIMS - 1:])) & 0x7FFFFFFFFFFFFFFF
    return h


def describe(h: np.ndarray) -> str:
    """e.g. ``float32 (3, 4)``."""
    if h[DTYPE] == 0:
        return "no array"
    ndim = int(h[NDIM])
    dims = [int(d) for d in h[DIMS:DIMS + min(ndim, MAX_DIMS)]]
    if ndim > MAX_DIMS:
        dims = dims[:MAX_DIMS - 1] + ["..."]
    return f"{dtype_of(h[DTYPE]).name} {tuple(dims)}"


def _by_value(values: list) -> str:
    groups: dict = {}
    for rank, v in enumerate(values):
        groups.setdefault(v, []).append(rank)
    return "; ".join(f"ranks {rs}: {v}" if len(rs) > 1 else f"rank {rs[0]}: {v}"
                     for v, rs in groups.items())


def check_headers(headers: np.ndarray, group: str) -> None:
    """Raises CollectiveError naming the ranks whose calls differ (same on every member)."""
    if (headers == headers[0]).all():
        if headers[0, BAD]:
            raise CollectiveError(f"group {group!r}: every rank passed invalid arguments to "
                                  f"{OP_NAMES.get(int(headers[0, KIND]), '?')}")
        return
    n = len(headers)
    kinds = [OP_NAMES.get(int(k), f"op {k}") for k in headers[:, KIND]]
    where = f"group {group!r}"
    if len(set(kinds)) > 1:
        raise CollectiveError(f"{where}: ranks called different collectives: {_by_value(kinds)}")
    what = kinds[0]
    bad = [r for r in range(n) if headers[r, BAD]]
    if bad:
        raise CollectiveError(f"{where}: {what}: rank(s) {bad} passed invalid arguments (see the "
                              "error raised there)")
    if len(set(headers[:, SEQ])) > 1:
        raise CollectiveError(f"{where}: {what}: ranks are at different calls (call numbers: "
                              f"{_by_value([int(s) for s in headers[:, SEQ]])})")
    if len(set(headers[:, REDUCE_OP])) > 1:
        ops = [ReduceOp(int(o)).name if o >= 0 else "-" for o in headers[:, REDUCE_OP]]
        raise CollectiveError(f"{where}: {what}: ranks passed different reduce ops: "
                              f"{_by_value(ops)}")
    if len(set(headers[:, ROOT])) > 1:
        raise CollectiveError(f"{where}: {what}: ranks name different root ranks: "
                              f"{_by_value([int(r) for r in headers[:, ROOT]])}")
    raise CollectiveError(f"{where}: {what}: arrays differ in dtype or shape: "
                          f"{_by_value([describe(h) for h in headers])}")


def mpi_reducible(dtype: np.dtype, op: ReduceOp, narrow_sums_saturate: bool = False) -> bool:
    """Whether MPI itself can apply op to dtype (else members reduce with numpy).

    ``narrow_sums_saturate``: the MPI library's sums and products of 8- and 16-bit integers
    saturate instead of wrapping (Open MPI 4.1's AVX reductions, open-mpi/ompi#8045).
    """
    if dtype in _COMPLEX:
        return op in (ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.AVG)
    if narrow_sums_saturate and dtype in _NARROW_INTS and op in (ReduceOp.SUM, ReduceOp.PRODUCT):
        return False
    return dtype in _MPI_REDUCIBLE


_VALID: dict[tuple, ReduceOp] = {}


def validate_reduce(dtype: np.dtype, op) -> ReduceOp:
    """The ReduceOp for op; TypeError where numpy cannot apply it to dtype."""
    valid = _VALID.get((dtype, op))
    if valid is None:
        valid = _VALID[(dtype, op)] = _validate_reduce(dtype, op)
    return valid


def _validate_reduce(dtype: np.dtype, op) -> ReduceOp:
    try:
        op = ReduceOp(op)
    except ValueError:
        raise ValueError(f"op must be a ReduceOp (SUM, PRODUCT, MIN, MAX, AVG), got {op!r}") from None
    if dtype.kind not in "biufc":
        raise TypeError(f"cannot reduce arrays of dtype {dtype}")
    if op is ReduceOp.AVG and dtype.kind not in "fc":
        raise TypeError(f"ReduceOp.AVG needs a floating or complex dtype, got {dtype}")
    if op in (ReduceOp.MIN, ReduceOp.MAX) and dtype.kind == "c":
        raise TypeError(f"ReduceOp.{op.name} is undefined for complex dtype {dtype}")
    return op


# numpy's add of booleans is logical or, as MPI's sum of them is
_UFUNCS = {ReduceOp.SUM: np.add, ReduceOp.PRODUCT: np.multiply, ReduceOp.MIN: np.minimum,
           ReduceOp.MAX: np.maximum, ReduceOp.AVG: np.add}


_AVG = ReduceOp.AVG


def reducer(parts, op: ReduceOp) -> Callable[[np.ndarray], object]:
    """A function of out that reduces parts[0], parts[1], ... in rank order into out (the
    same result on every rank); parts: an (n, ...) array or a list of n arrays shaped like
    out. Made once for views that later calls refill, it spares those calls the dispatch."""
    n = len(parts)
    if n == 1:
        first = parts[0]
        return lambda out: np.copyto(out, first)
    ufunc = _UFUNCS[op]
    if n == 2 and op != _AVG:
        first, second = parts[0], parts[1]
        return lambda out: ufunc(first, second, out)

    def reduce(out: np.ndarray) -> np.ndarray:
        ufunc(parts[0], parts[1], out=out)
        for part in parts[2:]:
            ufunc(out, part, out=out)
        if op == _AVG:
            np.true_divide(out, n, out=out)
        return out

    return reduce


def reduce_stack(parts, op: ReduceOp, out: np.ndarray) -> np.ndarray:
    """Reduces parts into out: see reducer."""
    reducer(parts, op)(out)
    return out
