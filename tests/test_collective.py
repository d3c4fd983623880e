"""hpcray.collective: the rendezvous and header checks in-process, every operation in real
MPI jobs against numpy references on random inputs, and the error paths.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from test_core import run

from hpcray.collective import CollectiveError, ReduceOp
from hpcray.collective.header import (
    ALLREDUCE,
    BROADCAST,
    check_headers,
    make_header,
    mpi_reducible,
    reduce_stack,
    validate_reduce,
)
from hpcray.collective.rendezvous import GroupRendezvous, RendezvousError

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_FASTPATH = importlib.util.find_spec("hpcray.collective._fastpath") is not None

# --------------------------------------------------------------------------------------------
# in-process: rendezvous bookkeeping and header checks
# --------------------------------------------------------------------------------------------


def test_rendezvous_forms_group_after_all_join() -> None:
    rdv = GroupRendezvous()
    assert rdv.join("g", 3, 0, "mpi", 5, "a") == {"state": "waiting", "missing": [1, 2]}
    assert rdv.join("g", 3, 2, "mpi", 7, "c")["missing"] == [1]
    go = rdv.join("g", 3, 1, "mpi", 6, "b")
    assert go["state"] == "go" and go["mpi_ranks"] == [5, 6, 7]
    assert rdv.join("g", 3, 0, "mpi", 5, "a") == go  # polling is idempotent


def test_rendezvous_serializes_groups_sharing_ranks() -> None:
    rdv = GroupRendezvous()
    for rank, (mpi, key) in enumerate([(1, "a0"), (2, "a1")]):
        rdv.join("a", 2, rank, "mpi", mpi, key)
    for rank, (mpi, key) in enumerate([(2, "b0"), (1, "b1")]):
        rdv.join("b", 2, rank, "mpi", mpi, key)
    for rank, (mpi, key) in enumerate([(3, "c0"), (4, "c1")]):  # disjoint: not held back
        rdv.join("c", 2, rank, "mpi", mpi, key)
    assert rdv.join("a", 2, 0, "mpi", 1, "a0")["state"] == "go"
    assert rdv.join("b", 2, 0, "mpi", 2, "b0")["state"] == "queued"
    assert rdv.join("c", 2, 0, "mpi", 3, "c0")["state"] == "go"
    go_a = rdv.join("a", 2, 1, "mpi", 2, "a1")
    rdv.created(go_a["instance"], 0)
    assert rdv.join("b", 2, 1, "mpi", 1, "b1")["state"] == "queued"
    rdv.created(go_a["instance"], 1)
    go_b = rdv.join("b", 2, 1, "mpi", 1, "b1")
    assert go_b["state"] == "go" and go_b["tag"] != go_a["tag"]


def test_rendezvous_hold_of_a_dead_creator_expires() -> None:
    now = [0.0]
    rdv = GroupRendezvous(clock=lambda: now[0], hold_timeout=10)
    rdv.join("a", 1, 0, "mpi", 1, "a0")
    rdv.join("b", 1, 0, "mpi", 1, "b0")
    assert rdv.join("b", 1, 0, "mpi", 1, "b0")["state"] == "queued"
    now[0] = 11.0
    assert rdv.join("b", 1, 0, "mpi", 1, "b0")["state"] == "go"


def test_rendezvous_errors() -> None:
    rdv = GroupRendezvous()
    rdv.join("g", 2, 0, "mpi", 1, "a")
    with pytest.raises(RendezvousError, match="world_size=3"):
        rdv.join("g", 3, 1, "mpi", 2, "b")
    with pytest.raises(RendezvousError, match="rank 0 was already joined"):
        rdv.join("g", 2, 0, "mpi", 2, "b")
    with pytest.raises(RendezvousError, match="rank must be in"):
        rdv.join("g", 2, 5, "mpi", 2, "b")
    with pytest.raises(RendezvousError, match="backend"):
        rdv.join("g", 2, 1, "nccl", 2, "b")
    rdv.join("h", 2, 0, "mpi", 4, "x")
    with pytest.raises(RendezvousError, match=r"share an MPI rank \(ranks \[0, 1\] on MPI rank 4"):
        rdv.join("h", 2, 1, "mpi", 4, "y")
    rdv.declare("d", {11: 0, 12: 1}, 2, "mpi")
    assert rdv.lookup("d", 12) == (2, 1, "mpi") and rdv.lookup("d", 13) is None
    with pytest.raises(RendezvousError, match="already declared"):
        rdv.declare("d", {11: 0}, 1, "mpi")
    rdv.destroy("d")
    assert rdv.lookup("d", 12) is None


def test_rendezvous_withdraw_leave_and_arrivals() -> None:
    rdv = GroupRendezvous()
    rdv.join("g", 2, 0, "mpi", 1, "a")
    rdv.withdraw("g", "a")
    assert rdv.join("g", 2, 1, "mpi", 2, "b")["missing"] == [0]
    go = rdv.join("g", 2, 0, "mpi", 1, "a")
    rdv.arrive(go["instance"], 4, 1)
    assert rdv.arrivals(go["instance"], 4) == [1] and rdv.arrivals(go["instance"], 5) == []
    rdv.leave(go["instance"], 0)
    rdv.leave(go["instance"], 1)
    again = rdv.join("g", 2, 0, "mpi", 1, "a")  # the name is free again
    assert again == {"state": "waiting", "missing": [1]}


def test_header_checks_name_the_ranks() -> None:
    a, b = np.zeros((3, 4), np.float32), np.zeros(5, np.float64)
    same = np.stack([make_header(ALLREDUCE, 1, a, 0)] * 3)
    check_headers(same, "g")
    shape = np.stack([make_header(ALLREDUCE, 1, a, 0)] * 2 + [make_header(ALLREDUCE, 1, b, 0)])
    with pytest.raises(CollectiveError,
                       match=r"ranks \[0, 1\]: float32 \(3, 4\); rank 2: float64 \(5,\)"):
        check_headers(shape, "g")
    kinds = np.stack([make_header(ALLREDUCE, 1, a, 0), make_header(BROADCAST, 1, a, -1, 0)])
    with pytest.raises(CollectiveError, match="rank 0: allreduce; rank 1: broadcast"):
        check_headers(kinds, "g")
    ops = np.stack([make_header(ALLREDUCE, 1, a, 0), make_header(ALLREDUCE, 1, a, 3)])
    with pytest.raises(CollectiveError, match="rank 0: SUM; rank 1: MAX"):
        check_headers(ops, "g")
    bad = np.stack([make_header(ALLREDUCE, 1, a, 0), make_header(ALLREDUCE, 1, None, bad=True)])
    with pytest.raises(CollectiveError, match=r"rank\(s\) \[1\] passed invalid arguments"):
        check_headers(bad, "g")
    deep = np.zeros((1,) * 10, np.int8)
    check_headers(np.stack([make_header(ALLREDUCE, 1, deep, 0)] * 2), "g")


def test_reduce_stack_and_validation() -> None:
    rng = np.random.default_rng(1)
    stack = rng.standard_normal((3, 5))
    out = np.empty(5)
    for op, ref in [(ReduceOp.SUM, stack[0] + stack[1] + stack[2]),
                    (ReduceOp.PRODUCT, stack[0] * stack[1] * stack[2]),
                    (ReduceOp.MIN, stack.min(0)), (ReduceOp.MAX, stack.max(0)),
                    (ReduceOp.AVG, (stack[0] + stack[1] + stack[2]) / 3)]:
        np.testing.assert_array_equal(reduce_stack(stack, op, out), ref)
    with pytest.raises(TypeError, match="AVG needs a floating"):
        validate_reduce(np.dtype(np.int32), ReduceOp.AVG)
    with pytest.raises(TypeError, match="undefined for complex"):
        validate_reduce(np.dtype(np.complex64), ReduceOp.MIN)
    with pytest.raises(ValueError, match="must be a ReduceOp"):
        validate_reduce(np.dtype(np.float32), 9)


@pytest.mark.skipif(not HAVE_FASTPATH, reason="the _fastpath C extension is not built")
def test_fastpath_reduction_matches_numpy() -> None:
    """The C reduction against numpy's in rank order, bit for bit: every type and op it
    takes, integers that wrap, NaNs (propagated by MIN and MAX, as numpy's are)."""
    from hpcray.collective import _fastpath
    from hpcray.collective.mpi_group import FAST_TYPES

    rng = np.random.default_rng(7)
    stride, offset, members = 96, 16, 3
    for dtype, code in FAST_TYPES.items():
        n = 40 // dtype.itemsize + 1
        for op in ReduceOp:
            if op is ReduceOp.AVG and dtype.kind != "f":
                continue
            if dtype.kind == "f":
                parts = rng.standard_normal((members, n)).astype(dtype) * 1e3
                parts[1, 0] = parts[2, 1] = np.nan
            else:
                info = np.iinfo(dtype)
                parts = rng.integers(info.min, info.max, (members, n), dtype=dtype,
                                     endpoint=True)
            gathered = bytearray(offset + members * stride)
            for r in range(members):
                start = offset + r * stride
                gathered[start:start + parts[r].nbytes] = parts[r].tobytes()
            out = np.empty(n, dtype)
            _fastpath.reduce(out, gathered, members, stride, offset, int(op), code)
            with np.errstate(all="ignore"):
                ref = reduce_stack(list(parts), op, np.empty(n, dtype))
            assert out.tobytes() == ref.tobytes(), (dtype, op)
    with pytest.raises(ValueError, match="bad reduction"):
        _fastpath.reduce(np.empty(4, np.float32), bytearray(8), 3, 96, 0, 0, 0)


# --------------------------------------------------------------------------------------------
# real jobs
# --------------------------------------------------------------------------------------------

MEMBER = '''
import functools
import numpy as np
import hpcray.collective as col
from hpcray.collective import ReduceOp


def outcome_of(fn):
    try:
        value = fn()
        return ["ok", value.tolist() if isinstance(value, np.ndarray) else value]
    except Exception as exc:
        cause = getattr(exc, "cause", None) or exc
        return ["err", type(cause).__name__, str(exc)]


@hpcray.remote(num_cpus=1)
class Member:
    def __init__(self, n, rank):
        self.n, self.rank = n, rank

    def join(self, name="default", rank=None, n=None, timeout_s=None, backend="mpi"):
        col.init_collective_group(n or self.n, self.rank if rank is None else rank,
                                  backend=backend, group_name=name, timeout_s=timeout_s)
        return [col.get_rank(name), col.get_collective_group_size(name)]

    def allreduce(self, x, op="SUM", name="default"):
        x = x.copy()
        col.allreduce(x, name, ReduceOp[op])
        return x

    def reduce(self, x, dst, op="SUM", name="default"):
        x = x.copy()
        col.reduce(x, dst, name, ReduceOp[op])
        return x

    def broadcast(self, x, src, name="default"):
        x = x.copy()
        col.broadcast(x, src, name)
        return x

    def broadcast_readonly(self, x, src, name="default"):
        x = x.copy()
        x.flags.writeable = False
        col.broadcast(x, src, name)
        return x

    def allgather(self, x, name="default"):
        out = [np.zeros_like(x) for _ in range(col.get_collective_group_size(name))]
        col.allgather(out, x, name)
        return out

    def reducescatter(self, xs, op="SUM", name="default"):
        out = np.zeros_like(xs[0])
        col.reducescatter(out, [x.copy() for x in xs], name, ReduceOp[op])
        return out

    def send(self, x, dst, name="default"):
        col.send(x, dst, name)

    def recv(self, like, src, name="default"):
        out = np.zeros_like(like)
        col.recv(out, src, name)
        return out

    def barrier(self, name="default"):
        col.barrier(name)
        return col.get_rank(name)

    def strided_allreduce(self, x):
        base = np.zeros(2 * len(x))
        view = base[::2]
        view[:] = x
        col.allreduce(view)
        return base

    def torch_ops(self, x):
        import torch
        t = torch.from_numpy(x.copy())
        col.allreduce(t)
        b = torch.from_numpy(x.copy()).to(torch.bfloat16)
        col.broadcast(b, 1)
        return t.numpy(), b.float().numpy()

    def mpi_allreduce(self, x, name="default"):
        """Raw mpi4py on the group's communicator, then the group itself again."""
        from mpi4py import MPI
        with col.mpi_comm(name) as comm:
            where = [comm.Get_rank(), comm.Get_size()]
            raw = x.copy()
            comm.Allreduce(MPI.IN_PLACE, raw)
        again = x.copy()
        col.allreduce(again, name)
        return where, raw, again

    def mpi_raises(self, name="default"):
        try:
            with col.mpi_comm(name):
                raise KeyError("inside")
        except KeyError:
            pass
        return self.barrier(name)  # the block left the locks free

    def fast_path(self, name="default"):
        """Whether this member's group runs small calls in C (the _fastpath extension)."""
        from hpcray.collective.collective import _group
        return _group(name)._fast is not None

    def run(self, method, *args, **kwargs):
        return outcome_of(lambda: getattr(self, method)(*args, **kwargs))

    def repeat(self, method, xs, *args):
        """method(x, *args) for each x in xs: one call signature, so all but the first call
        take the small-call fast path (arguments checked once)."""
        return [getattr(self, method)(x, *args) for x in xs]

    def destroy(self, name="default"):
        col.destroy_collective_group(name)
        return col.is_group_initialized(name)


REF = {"SUM": lambda xs: functools.reduce(np.add, xs),
       "PRODUCT": lambda xs: functools.reduce(np.multiply, xs),
       "MIN": lambda xs: functools.reduce(np.minimum, xs),
       "MAX": lambda xs: functools.reduce(np.maximum, xs),
       "AVG": lambda xs: functools.reduce(np.add, xs) / len(xs)}


def same(got, ref):
    got, ref = np.asarray(got), np.asarray(ref)
    if got.dtype != ref.dtype or got.shape != ref.shape:
        return False
    if got.dtype.kind == "f":
        tol = 1e-2 if got.dtype == np.float16 else 1e-5
        return bool(np.allclose(got, ref, rtol=tol, atol=tol))
    return bool(np.array_equal(got, ref))


def inputs(rng, n, dtype, shape):
    if np.dtype(dtype).kind == "f":
        return [rng.uniform(0.5, 1.5, shape).astype(dtype) for _ in range(n)]
    return [rng.integers(-5, 6, shape).astype(dtype) for _ in range(n)]
'''

OPS_JOB = MEMBER + '''
hpcray.init()
N = int(sys.argv[1])
rng = np.random.default_rng(100 + N)
ms = [Member.remote(N, r) for r in range(N)]
R = {"join": hpcray.get([m.join.remote() for m in ms]), "failures": []}
fail = R["failures"].append
SHAPES = [(3, 4), (5000,)]   # inline with the header, and through MPI's own collectives
for dtype in (np.float64, np.float32, np.int64, np.int32, np.float16):
    for shape in SHAPES:
        ops = ["SUM", "PRODUCT", "MIN", "MAX"] + (["AVG"] if np.dtype(dtype).kind == "f" else [])
        for op in ops:
            xs = inputs(rng, N, dtype, shape)
            ref = REF[op](xs)
            got = hpcray.get([m.allreduce.remote(x, op) for m, x in zip(ms, xs)])
            if not all(same(g, ref) for g in got):
                fail(["allreduce", str(np.dtype(dtype)), shape, op])
            dst = int(rng.integers(N))
            got = hpcray.get([m.reduce.remote(x, dst, op) for m, x in zip(ms, xs)])
            if not same(got[dst], ref) or not all(same(got[r], xs[r]) for r in range(N) if r != dst):
                fail(["reduce", str(np.dtype(dtype)), shape, op, dst])
            parts = [inputs(rng, N, dtype, shape) for _ in range(N)]  # parts[member][chunk]
            got = hpcray.get([m.reducescatter.remote(p, op) for m, p in zip(ms, parts)])
            for r in range(N):
                if not same(got[r], REF[op]([parts[i][r] for i in range(N)])):
                    fail(["reducescatter", str(np.dtype(dtype)), shape, op, r])
        xs = inputs(rng, N, dtype, shape)
        src = int(rng.integers(N))
        got = hpcray.get([m.broadcast.remote(x, src) for m, x in zip(ms, xs)])
        if not all(same(g, xs[src]) for g in got):
            fail(["broadcast", str(np.dtype(dtype)), shape, src])
        got = hpcray.get([m.allgather.remote(x) for m, x in zip(ms, xs)])
        if not all(len(g) == N and all(same(a, b) for a, b in zip(g, xs)) for g in got):
            fail(["allgather", str(np.dtype(dtype)), shape])
        for src, dst in [(0, N - 1), (N - 1, 0)]:
            x = xs[src]
            sent = ms[src].send.remote(x, dst)
            got = hpcray.get(ms[dst].recv.remote(x, src))
            hpcray.get(sent)
            if not same(got, x):
                fail(["send/recv", str(np.dtype(dtype)), shape, src, dst])
R["bool_max"] = [bool(same(g, np.logical_or.reduce(xs))) for g, xs in [
    (g, xs) for xs in [[rng.random(2000) > 0.5 for _ in range(N)]]
    for g in hpcray.get([m.allreduce.remote(x, "MAX") for m, x in zip(ms, xs)])]]
xs = inputs(rng, N, np.float64, (700,))
R["strided"] = [same(g[::2], REF["SUM"](xs)) and not g[1::2].any()
                for g in hpcray.get([m.strided_allreduce.remote(x) for m, x in zip(ms, xs)])]
R["barrier"] = hpcray.get([m.barrier.remote() for m in ms])
# a second group over the same actors, ranks reversed, declared by the driver (joined lazily)
col.create_collective_group(ms, N, list(reversed(range(N))), group_name="rev")
xs = inputs(rng, N, np.float64, (10000,))
got = hpcray.get([m.allreduce.remote(x, "SUM", "rev") for m, x in zip(ms, xs)])
R["rev_allreduce"] = all(same(g, REF["SUM"](xs)) for g in got)
R["rev_ranks"] = hpcray.get([m.barrier.remote("rev") for m in ms])
got = hpcray.get([m.broadcast.remote(x, 0, "rev") for m, x in zip(ms, xs)])
R["rev_broadcast_root_is_last_actor"] = all(same(g, xs[N - 1]) for g in got)
got = hpcray.get([m.allreduce.remote(x, "MAX") for m, x in zip(ms, xs)])
R["default_still_works"] = all(same(g, REF["MAX"](xs)) for g in got)
if TORCH:
    xs = inputs(rng, N, np.float32, (33, 7))
    got = hpcray.get([m.torch_ops.remote(x) for m, x in zip(ms, xs)])
    R["torch"] = [bool(same(t, REF["SUM"](xs)) and np.allclose(b, xs[1], rtol=1e-2))
                  for t, b in got]
R["destroyed"] = hpcray.get([m.destroy.remote("rev") for m in ms])
emit(R)
'''


NARROW_JOB = MEMBER + '''


@hpcray.remote(num_cpus=1)
class Narrow(Member._cls):
    def saturating_mpi(self, flag):
        import hpcray.collective.mpi_group as g
        g.NARROW_SUMS_SATURATE = flag


hpcray.init()
ms = [Narrow.remote(2, r) for r in range(2)]
hpcray.get([m.join.remote() for m in ms])
hpcray.get([m.saturating_mpi.remote(sys.argv[1] == "1") for m in ms])
rng = np.random.default_rng(5)
R = {"failures": []}
for dtype in (np.uint8, np.int8, np.uint16, np.int16):
    info = np.iinfo(dtype)
    for op in ("SUM", "PRODUCT"):
        # values near the type's ends, so that sums and products wrap around
        xs = [rng.integers(info.min, info.max, 5000, endpoint=True).astype(dtype) for _ in range(2)]
        got = hpcray.get([m.allreduce.remote(x, op) for m, x in zip(ms, xs)])
        if not all(same(g, REF[op](xs)) for g in got):
            R["failures"].append(["allreduce", str(np.dtype(dtype)), op])
        got = hpcray.get([m.reduce.remote(x, 1, op) for m, x in zip(ms, xs)])
        if not same(got[1], REF[op](xs)):
            R["failures"].append(["reduce", str(np.dtype(dtype)), op])
        parts = [[x, x[::-1].copy()] for x in xs]
        got = hpcray.get([m.reducescatter.remote(p, op) for m, p in zip(ms, parts)])
        if not all(same(got[r], REF[op]([parts[0][r], parts[1][r]])) for r in range(2)):
            R["failures"].append(["reducescatter", str(np.dtype(dtype)), op])
emit(R)
'''


@pytest.mark.parametrize("saturating", [0, 1], ids=["mpi-reduces", "numpy-reduces"])
def test_narrow_integer_sums_wrap(run_job, saturating: int) -> None:
    """8- and 16-bit integer sums and products wrap around, as numpy's do, whether MPI reduces
    them or, where the MPI library saturates them (Open MPI 4.1's AVX ops), numpy does."""
    r, _ = run(run_job, NARROW_JOB, n=3, args=[str(saturating)], timeout=120)
    assert r["failures"] == []


def test_open_mpi_narrow_sums_go_to_numpy() -> None:
    u8, i16, f32 = np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.float32)
    assert mpi_reducible(u8, ReduceOp.SUM) and mpi_reducible(i16, ReduceOp.PRODUCT)
    assert not mpi_reducible(u8, ReduceOp.SUM, True)
    assert not mpi_reducible(i16, ReduceOp.PRODUCT, True)
    assert mpi_reducible(u8, ReduceOp.MAX, True) and mpi_reducible(f32, ReduceOp.SUM, True)


@pytest.mark.parametrize("members", [2, 3])
def test_every_op_against_numpy(run_job, members: int) -> None:
    body = OPS_JOB.replace("if TORCH:", f"if {HAVE_TORCH}:")
    r, _ = run(run_job, body, n=members + 1, args=[str(members)], timeout=240)
    assert r["join"] == [[i, members] for i in range(members)]
    assert r["failures"] == []
    assert r["bool_max"] == [True] * members
    assert r["strided"] == [True] * members
    assert r["barrier"] == list(range(members))
    assert r["rev_allreduce"] and r["rev_broadcast_root_is_last_actor"]
    assert r["rev_ranks"] == list(reversed(range(members)))
    assert r["default_still_works"]
    if HAVE_TORCH:
        assert r["torch"] == [True] * members
    assert r["destroyed"] == [False] * members


FAST_JOB = MEMBER + '''
from hpcray.collective.header import INLINE

hpcray.init()
N = int(sys.argv[1])
rng = np.random.default_rng(300 + N)
ms = [Member.remote(N, r) for r in range(N)]
hpcray.get([m.join.remote() for m in ms])
R = {"failures": [], "checked": 0}
fail = R["failures"].append
CALLS = 3  # per signature: the first is checked in full, the others take the fast path


def draw(dtype, shape):
    """Random values (an array even for shape ()) whose products over 3 ranks fit dtype."""
    if dtype.kind == "b":
        x = rng.random(shape) > 0.5
    elif dtype.kind == "c":
        x = rng.uniform(0.5, 1.5, shape) + 1j * rng.uniform(0.5, 1.5, shape)
    elif dtype.kind == "f":
        x = rng.uniform(0.5, 1.5, shape)
    else:
        x = rng.integers(0 if dtype.kind == "u" else -5, 6, shape)
    return np.array(x, dtype)


def exact(got, ref):
    """Bit for bit: small data is reduced in rank order, as the reference is."""
    got, ref = np.asarray(got), np.asarray(ref)
    return got.dtype == ref.dtype and got.shape == ref.shape and got.tobytes() == ref.tobytes()


def close(got, ref):
    """Large data goes through MPI, which may sum in another order."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.dtype != ref.dtype or got.shape != ref.shape:
        return False
    if got.dtype.kind in "fc":
        tol = 1e-2 if got.dtype == np.float16 else 1e-5
        return bool(np.allclose(got, ref, rtol=tol, atol=tol))
    return bool(np.array_equal(got, ref))


def ops_for(dtype):
    return [op for op in REF if not (op in ("MIN", "MAX") and dtype.kind == "c")
            and not (op == "AVG" and dtype.kind not in "fc")]


for dtype in map(np.dtype, (np.float64, np.float32, np.float16, np.complex64, np.int64,
                            np.int32, np.int8, np.uint8, np.bool_)):
    edge = INLINE // dtype.itemsize  # the most elements that travel with the header
    for shape in [(), (1,), (2, 3), (edge,), (edge + 1,)]:
        small = int(np.prod(shape)) * dtype.itemsize <= INLINE
        check = exact if small else close
        what = [str(dtype), list(shape)]
        for op in ops_for(dtype):
            xs = [[draw(dtype, shape) for _ in range(CALLS)] for _ in range(N)]  # [rank][call]
            got = hpcray.get([m.repeat.remote("allreduce", x, op) for m, x in zip(ms, xs)])
            for c in range(CALLS):
                ref = REF[op]([xs[r][c] for r in range(N)])
                R["checked"] += 1
                if not all(check(got[r][c], ref) for r in range(N)):
                    fail(["allreduce", *what, op, c])
            dst = int(rng.integers(N))
            got = hpcray.get([m.repeat.remote("reduce", x, dst, op) for m, x in zip(ms, xs)])
            for c in range(CALLS):
                ref = REF[op]([xs[r][c] for r in range(N)])
                if not (check(got[dst][c], ref)
                        and all(exact(got[r][c], xs[r][c]) for r in range(N) if r != dst)):
                    fail(["reduce", *what, op, dst, c])
        src = int(rng.integers(N))
        got = hpcray.get([m.repeat.remote("broadcast", x, src) for m, x in zip(ms, xs)])
        if not all(exact(got[r][c], xs[src][c]) for r in range(N) for c in range(CALLS)):
            fail(["broadcast", *what, src])
# a cached signature, then a strided array of it (copied, reduced, written back)
xs = [[draw(np.dtype(np.float64), (5,)) for _ in range(CALLS)] for _ in range(N)]
got = hpcray.get([m.repeat.remote("strided_allreduce", x) for m, x in zip(ms, xs)])
R["strided"] = all(exact(got[r][c][::2], REF["SUM"]([xs[i][c] for i in range(N)]))
                   and not np.asarray(got[r][c][1::2]).any()
                   for r in range(N) for c in range(CALLS))
R["fast_path"] = hpcray.get([m.fast_path.remote() for m in ms])
emit(R)
'''


@pytest.mark.parametrize(("members", "fast"), [(2, True), (3, True), (3, False)])
def test_small_calls_against_numpy(run_job, members: int, fast: bool) -> None:
    """Data up to INLINE bytes travels with the header and is reduced in rank order: every
    dtype and op, on both sides of the boundary, the first call and the cached ones (which
    run in C where the _fastpath extension was built, unless switched off)."""
    env = {"HPCRAY_COLLECTIVE_FASTPATH": "1" if fast else "0"}
    r, _ = run(run_job, FAST_JOB, n=members + 1, args=[str(members)], timeout=300, env=env)
    assert r["fast_path"] == [fast and HAVE_FASTPATH] * members
    assert r["failures"] == []
    assert r["checked"] == 3 * 5 * 38  # calls x shapes x (dtype, op) pairs
    assert r["strided"]


CONCURRENT_JOB = MEMBER + '''
from hpcray.util import PlacementGroupSchedulingStrategy, placement_group

hpcray.init()
pg = placement_group([{"CPU": 1}] * 2)
hpcray.get(pg.ready(), timeout=30)
def on(i):
    return Member.options(num_cpus=0.25, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i))
# two groups over the same two ranks whose members join at once, in opposite rank orders
a = [on(0).remote(2, 0), on(1).remote(2, 1)]
b = [on(1).remote(2, 0), on(0).remote(2, 1)]
R = {}
joins = [m.join.remote("a") for m in a] + [m.join.remote("b") for m in b]
R["joins"] = hpcray.get(joins, timeout=60)
rng = np.random.default_rng(5)
xa, xb = inputs(rng, 2, np.float32, (100000,)), inputs(rng, 2, np.float32, (100000,))
refs = ([m.allreduce.remote(x, "SUM", "a") for m, x in zip(a, xa)]
        + [m.allreduce.remote(x, "SUM", "b") for m, x in zip(b, xb)])
got = hpcray.get(refs, timeout=60)
R["a"] = [same(g, xa[0] + xa[1]) for g in got[:2]]
R["b"] = [same(g, xb[0] + xb[1]) for g in got[2:]]
# two members of one group on one MPI rank: a clear error for both
c = [on(0).remote(2, 0), on(0).remote(2, 1)]
R["shared"] = hpcray.get([m.run.remote("join", "c", timeout_s=20) for m in c])
emit(R)
'''


def test_concurrent_groups_on_shared_ranks(run_job) -> None:
    r, _ = run(run_job, CONCURRENT_JOB, n=3, timeout=120)
    assert r["joins"] == [[0, 2], [1, 2], [0, 2], [1, 2]]
    assert r["a"] == [True, True] and r["b"] == [True, True]
    for res in r["shared"]:
        assert res[0] == "err" and "share an MPI rank" in res[2], res


ERRORS_JOB = MEMBER + '''
hpcray.init()
R = {}
ms = [Member.remote(3, r) for r in range(3)]
hpcray.get([m.join.remote("e", timeout_s=3) for m in ms])
x = np.ones(4)
R["shape"] = hpcray.get([m.run.remote("allreduce", np.ones(5 if i == 2 else 4), "SUM", "e")
                         for i, m in enumerate(ms)])
R["dtype"] = hpcray.get([m.run.remote("allreduce", np.ones(4, np.float32 if i else np.float64),
                                      "SUM", "e") for i, m in enumerate(ms)])
R["kinds"] = hpcray.get([ms[0].run.remote("broadcast", x, 0, "e")]
                        + [m.run.remote("allreduce", x, "SUM", "e") for m in ms[1:]])
R["ops"] = hpcray.get([m.run.remote("allreduce", x, "MAX" if i == 1 else "SUM", "e")
                       for i, m in enumerate(ms)])
R["readonly"] = hpcray.get([m.run.remote("broadcast_readonly", x, 0, "e") for m in ms])
R["big_shape"] = hpcray.get([m.run.remote("allreduce", np.ones(1000 + i), "SUM", "e")
                             for i, m in enumerate(ms)])
R["readonly_again"] = hpcray.get([m.run.remote("broadcast_readonly", x, 0, "e") for m in ms])
# 64 float64 travel with the header, 65 do not: still one header round, which tells them apart
R["boundary"] = hpcray.get([m.run.remote("allreduce", np.ones(65 if i == 2 else 64), "SUM", "e")
                            for i, m in enumerate(ms)])
hpcray.get([m.run.remote("allreduce", np.ones(64), "SUM", "e") for m in ms])
R["boundary_cached"] = hpcray.get([m.run.remote("allreduce", np.ones(65 if i == 0 else 64),
                                                "SUM", "e") for i, m in enumerate(ms)])
R["dtype_cached"] = hpcray.get([m.run.remote("allreduce", np.ones(64, np.int64 if i == 1 else
                                                                  np.float64), "SUM", "e")
                                for i, m in enumerate(ms)])
R["after"] = hpcray.get([m.run.remote("allreduce", x, "SUM", "e") for m in ms])
R["recv"] = hpcray.get([ms[0].run.remote("send", np.ones(100000), 1, "e"),
                        ms[1].run.remote("recv", np.ones(100000, np.float32), 0, "e")])
R["missing"] = hpcray.get([m.run.remote("allreduce", x, "SUM", "e") for m in ms[:2]])
R["broken"] = hpcray.get(ms[0].run.remote("barrier", "e"))
R["lonely"] = hpcray.get(ms[0].run.remote("join", "lonely", 0, 3, 1.5))
R["nccl"] = hpcray.get(ms[0].run.remote("join", "n", 0, 1, 5, "nccl"))
R["unknown"] = hpcray.get(ms[0].run.remote("barrier", "nope"))
R["driver"] = outcome(lambda: col.init_collective_group(2, 0, group_name="d"))
emit(R)
'''


MPI_COMM_JOB = MEMBER + '''
hpcray.init()
N = 3
ms = [Member.remote(N, r) for r in range(N)]
hpcray.get([m.join.remote() for m in ms], timeout=60)
xs = inputs(np.random.default_rng(11), N, np.float64, (1000,))
ref = REF["SUM"](xs)
got = hpcray.get([m.mpi_allreduce.remote(x) for m, x in zip(ms, xs)], timeout=60)
R = {"where": [g[0] for g in got], "raw": [same(g[1], ref) for g in got],
     "again": [same(g[2], ref) for g in got]}
R["raised"] = hpcray.get([m.run.remote("mpi_raises") for m in ms], timeout=60)
R["unknown"] = hpcray.get(ms[0].run.remote("mpi_allreduce", xs[0], "nope"))
emit(R)
'''


def test_mpi_comm_runs_mpi4py_among_members(run_job) -> None:
    """col.mpi_comm: raw mpi4py among the members, whose ranks are the group's; the group
    works after the block, also when the block raised."""
    r, _ = run(run_job, MPI_COMM_JOB, n=4, timeout=120)
    assert r["where"] == [[i, 3] for i in range(3)]
    assert r["raw"] == [True] * 3 and r["again"] == [True] * 3
    assert r["raised"] == [["ok", i] for i in range(3)]
    assert r["unknown"][0] == "err" and "'nope' is not initialized" in r["unknown"][2]


def test_error_paths_name_the_ranks(run_job) -> None:
    r, _ = run(run_job, ERRORS_JOB, n=4, timeout=180)

    def all_err(results, *texts):
        return all(res[0] == "err" and all(t in res[2] for t in texts) for res in results)

    assert all_err(r["shape"], "ranks [0, 1]: float64 (4,); rank 2: float64 (5,)"), r["shape"]
    assert all_err(r["dtype"], "rank 0: float64 (4,); ranks [1, 2]: float32 (4,)"), r["dtype"]
    assert all_err(r["kinds"], "rank 0: broadcast; ranks [1, 2]: allreduce"), r["kinds"]
    assert all_err(r["ops"], "ranks [0, 2]: SUM; rank 1: MAX"), r["ops"]
    ro = r["readonly"]
    assert all_err(ro[:1], "rank(s) [1, 2] passed invalid") and all_err(ro[1:], "read-only"), ro
    ro = r["readonly_again"]  # the root's call is cached by now
    assert all_err(ro[:1], "rank(s) [1, 2] passed invalid") and all_err(ro[1:], "read-only"), ro
    assert all_err(r["boundary"], "ranks [0, 1]: float64 (64,); rank 2: float64 (65,)")
    assert all_err(r["boundary_cached"], "rank 0: float64 (65,); ranks [1, 2]: float64 (64,)")
    assert all_err(r["dtype_cached"], "ranks [0, 2]: float64 (64,); rank 1: int64 (64,)")
    assert all_err(r["big_shape"], "rank 0: float64 (1000,); rank 1: float64 (1001,)")
    assert all(res == ["ok", [3.0] * 4] for res in r["after"]), r["after"]
    assert all_err(r["recv"], "float64 (100000,)", "float32 (100000,)"), r["recv"]
    assert all_err(r["missing"], "rank(s) [2] did not arrive",
                   "ranks [0, 1] did"), r["missing"]
    assert all_err([r["broken"]], "unusable"), r["broken"]
    assert all_err([r["lonely"]], "rank(s) [1, 2] did not join"), r["lonely"]
    assert all_err([r["nccl"]], "backend 'nccl' is unavailable"), r["nccl"]
    assert all_err([r["unknown"]], "'nope' is not initialized"), r["unknown"]
    assert r["driver"][0] == "err" and "not by the driver" in r["driver"][2]
