"""hpcray.collective's "nccl" backend without a GPU: path choice in-process; every operation
in real MPI jobs on fake device arrays (host memory behind ``__cuda_array_interface__``),
which take the host-staging path, against numpy references; the error paths.
tests/gpu/test_collective_cupy.py runs the same job on CuPy arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
from fakegpu import asarray
from test_collective import MEMBER
from test_core import run

from hpcray._private.device.arrays import as_device
from hpcray.collective import CollectiveError, ReduceOp
from hpcray.collective.gpu_path import (
    NCCL,
    STAGED,
    choose_group_path,
    nccl_reducible,
    shared_gpus,
)

# --------------------------------------------------------------------------------------------
# in-process: which path a group takes
# --------------------------------------------------------------------------------------------


def test_distinct_gpus_take_nccl() -> None:
    choice = choose_group_path(["GPU-a", "GPU-b", "GPU-c"])
    assert choice.path == NCCL and "3 members" in choice.reason


def test_shared_gpus_are_staged_naming_the_ranks() -> None:
    choice = choose_group_path(["GPU-a", "GPU-b", "GPU-a", "GPU-b", "GPU-c"])
    assert choice.path == STAGED
    assert "ranks [0, 2] share GPU GPU-a; ranks [1, 3] share GPU GPU-b" in choice.reason
    assert shared_gpus(["x", "y", "x"]) == {"x": [0, 2]}
    assert shared_gpus(["x", "y"]) == {}


def test_without_nccl_everything_is_staged() -> None:
    choice = choose_group_path(["GPU-a", "GPU-b"], nccl_missing="CuPy is not installed")
    assert choice.path == STAGED and "CuPy is not installed" in choice.reason


def test_forced_paths() -> None:
    assert choose_group_path(["a", "b"], forced="staged").path == STAGED
    # forced NCCL on a shared GPU: tried (NCCL refuses it; the group then falls back)
    assert choose_group_path(["a", "a"], forced="nccl").path == NCCL
    assert choose_group_path(["a", "a"], nccl_missing="no", forced="nccl").path == STAGED
    with pytest.raises(ValueError, match="HPCRAY_COLLECTIVE_GPU_PATH"):
        choose_group_path(["a"], forced="ipc")


def test_members_without_a_gpu_are_named() -> None:
    with pytest.raises(CollectiveError, match=r"ranks \[1, 2\] have no GPU"):
        choose_group_path(["GPU-a", "", ""])


def test_what_nccl_reduces_itself() -> None:
    assert nccl_reducible(np.dtype(np.float16), ReduceOp.AVG)
    assert nccl_reducible(np.dtype(np.int64), ReduceOp.PRODUCT)
    assert not nccl_reducible(np.dtype(np.bool_), ReduceOp.MAX)       # staged instead
    assert not nccl_reducible(np.dtype(np.complex64), ReduceOp.SUM)
    assert not nccl_reducible(np.dtype(np.int16), ReduceOp.SUM)


def test_device_arrays_and_what_is_refused() -> None:
    d = as_device(asarray(np.arange(6, dtype=np.float32).reshape(2, 3)), True)
    assert (d.dtype, d.shape, d.nbytes) == (np.dtype(np.float32), (2, 3), 24)
    host = np.empty((2, 3), np.float32)
    d.download(host)
    np.testing.assert_array_equal(host, np.arange(6).reshape(2, 3))
    d.upload(host * 2)
    assert d.like().shape == (2, 3) and d.like().dtype == np.float32
    with pytest.raises(TypeError, match="tensor is a numpy array: backend 'nccl' moves device"):
        as_device(np.zeros(3), True)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch tensor on cpu: backend 'nccl' moves CUDA"):
        as_device(torch.zeros(3), True)


# --------------------------------------------------------------------------------------------
# real jobs: every operation through the staging path
# --------------------------------------------------------------------------------------------

# DEV(numpy) -> device array, HOST(device array) -> numpy and TORCH_CUDA() (whether to try
# CUDA torch tensors too) come from each array library's prelude; tests/gpu runs the same
# jobs with CuPy
DEVICE_MEMBER = MEMBER + '''
from hpcray.collective.collective import _lookup


def where_differ(got, ref):
    """[mismatches, first index, got there, expected there] (for failure reports)."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return [str(got.dtype), list(got.shape), str(ref.dtype), list(ref.shape)]
    bad = np.flatnonzero(got.reshape(-1) != ref.reshape(-1))
    i = int(bad[0]) if bad.size else -1
    return [int(bad.size), i, got.reshape(-1)[i].item(), ref.reshape(-1)[i].item()]


@hpcray.remote(num_cpus=1, num_gpus=0.25)
class DevMember(Member._cls):
    def join(self, name="default", rank=None, n=None, timeout_s=None, backend="nccl"):
        got = super().join(name, rank, n, timeout_s, backend)
        return got + [_lookup(name).path, col.describe_group(name)]

    def allreduce(self, x, op="SUM", name="default"):
        d = DEV(x)
        col.allreduce(d, name, ReduceOp[op])
        return HOST(d)

    def reduce(self, x, dst, op="SUM", name="default"):
        d = DEV(x)
        col.reduce(d, dst, name, ReduceOp[op])
        return HOST(d)

    def broadcast(self, x, src, name="default"):
        d = DEV(x)
        col.broadcast(d, src, name)
        return HOST(d)

    def allgather(self, x, name="default"):
        out = [DEV(np.zeros_like(x)) for _ in range(col.get_collective_group_size(name))]
        col.allgather(out, DEV(x), name)
        return [HOST(o) for o in out]

    def reducescatter(self, xs, op="SUM", name="default"):
        out = DEV(np.zeros_like(xs[0]))
        col.reducescatter(out, [DEV(x) for x in xs], name, ReduceOp[op])
        return HOST(out)

    def send(self, x, dst, name="default"):
        col.send(DEV(x), dst, name)

    def recv(self, like, src, name="default"):
        out = DEV(np.zeros_like(like))
        col.recv(out, src, name)
        return HOST(out)

    def nccl_calls(self):
        """What ran on NCCL (the stand-in of tests/stand_ins records it; CuPy does not)."""
        from cupy.cuda import nccl
        return sorted(set(getattr(nccl, "CALLS", [])))

    def host_allreduce(self, x, name="default"):
        col.allreduce(x.copy(), name)   # numpy to a GPU group

    def torch_allreduce(self, x, name="default"):
        # CUDA tensors, incl. a non-contiguous one and bfloat16, where torch has CUDA
        import torch
        t = torch.from_numpy(x.copy()).cuda()
        col.allreduce(t, name)
        wide = torch.zeros(x.size * 2, dtype=torch.float64, device="cuda")
        strided = wide[::2]
        strided.copy_(torch.from_numpy(x.reshape(-1).copy()))
        col.allreduce(strided, name)
        b = torch.from_numpy(x.copy()).cuda().to(torch.bfloat16)
        col.broadcast(b, 1, name)
        return [t.cpu().numpy(), wide.cpu().numpy(), b.float().cpu().numpy()]
'''

GPU_OPS_JOB = DEVICE_MEMBER + '''
hpcray.init()
N = int(sys.argv[1])
rng = np.random.default_rng(200 + N)
ms = [DevMember.remote(N, r) for r in range(N)]
R = {"join": hpcray.get([m.join.remote() for m in ms], timeout=120), "failures": []}
fail = R["failures"].append
for dtype in (np.float64, np.float32, np.int32, np.float16, np.uint8):
    for shape in [(3, 4), (5000,), ()]:   # inline with the header, through MPI, 0-d
        ops = ["SUM", "PRODUCT", "MIN", "MAX"] + (["AVG"] if np.dtype(dtype).kind == "f" else [])
        for op in ops:
            xs = inputs(rng, N, dtype, shape)
            ref = REF[op](xs)
            got = hpcray.get([m.allreduce.remote(x, op) for m, x in zip(ms, xs)], timeout=120)
            if not all(same(g, ref) for g in got):
                fail(["allreduce", str(np.dtype(dtype)), shape, op,
                      [where_differ(g, ref) for g in got]])
            dst = int(rng.integers(N))
            got = hpcray.get([m.reduce.remote(x, dst, op) for m, x in zip(ms, xs)], timeout=120)
            if not same(got[dst], ref) or not all(same(got[r], xs[r]) for r in range(N) if r != dst):
                fail(["reduce", str(np.dtype(dtype)), shape, op, dst, where_differ(got[dst], ref)])
            parts = [inputs(rng, N, dtype, shape) for _ in range(N)]
            got = hpcray.get([m.reducescatter.remote(p, op) for m, p in zip(ms, parts)],
                             timeout=120)
            for r in range(N):
                if not same(got[r], REF[op]([parts[i][r] for i in range(N)])):
                    fail(["reducescatter", str(np.dtype(dtype)), shape, op, r])
        xs = inputs(rng, N, dtype, shape)
        src = int(rng.integers(N))
        got = hpcray.get([m.broadcast.remote(x, src) for m, x in zip(ms, xs)], timeout=120)
        if not all(same(g, xs[src]) for g in got):
            fail(["broadcast", str(np.dtype(dtype)), shape, src])
        got = hpcray.get([m.allgather.remote(x) for m, x in zip(ms, xs)], timeout=120)
        if not all(len(g) == N and all(same(a, b) for a, b in zip(g, xs)) for g in got):
            fail(["allgather", str(np.dtype(dtype)), shape])
        for src, dst in [(0, N - 1), (N - 1, 0)]:
            sent = ms[src].send.remote(xs[src], dst)
            got = hpcray.get(ms[dst].recv.remote(xs[src], src), timeout=120)
            hpcray.get(sent, timeout=120)
            if not same(got, xs[src]):
                fail(["send/recv", str(np.dtype(dtype)), shape, src, dst])
R["barrier"] = hpcray.get([m.barrier.remote() for m in ms], timeout=120)
if TORCH_CUDA():
    xs = inputs(rng, N, np.float64, (33, 7))
    got = hpcray.get([m.torch_allreduce.remote(x) for m, x in zip(ms, xs)], timeout=120)
    ref = REF["SUM"](xs)
    R["torch"] = [bool(same(t, ref) and same(w[::2], ref.reshape(-1)) and not w[1::2].any()
                       and np.allclose(b, xs[1], rtol=1e-2)) for t, w, b in got]
R["destroyed"] = hpcray.get([m.destroy.remote() for m in ms], timeout=120)
emit(R)
'''

FAKE_DEVICE = '''
import fakegpu
DEV = fakegpu.asarray
HOST = lambda d: d.get()
TORCH_CUDA = lambda: False
'''


@pytest.mark.parametrize("members", [2, 3])
def test_every_op_staged_on_fake_device_arrays(run_job, members: int) -> None:
    r, _ = run(run_job, FAKE_DEVICE + GPU_OPS_JOB, n=members + 1, args=[str(members)],
               timeout=240, env={"HPCRAY_NUM_GPUS": "1"})
    for rank, (got_rank, size, path, line) in enumerate(r["join"]):
        assert (got_rank, size, path) == (rank, members, "staged")
        assert "path staged" in line and "share GPU" in line, line
    assert r["failures"] == []
    assert r["barrier"] == list(range(members))
    assert r["destroyed"] == [False] * members


GPU_ERRORS_JOB = DEVICE_MEMBER + '''
import fakegpu
DEV = fakegpu.asarray
HOST = lambda d: d.get()

hpcray.init()
R = {}
ms = [DevMember.remote(3, r) for r in range(3)]
R["join"] = hpcray.get([m.join.remote("e", timeout_s=3) for m in ms], timeout=60)
x = np.ones(4)
R["numpy"] = hpcray.get([ms[1].run.remote("host_allreduce", x, "e")]
                        + [m.run.remote("allreduce", x, "SUM", "e") for m in (ms[0], ms[2])],
                        timeout=60)
R["shape"] = hpcray.get([m.run.remote("allreduce", np.ones(5 if i == 2 else 4), "SUM", "e")
                         for i, m in enumerate(ms)], timeout=60)
R["big_dtype"] = hpcray.get([m.run.remote("allreduce",
                                          np.ones(1000, np.float32 if i else np.float64),
                                          "SUM", "e") for i, m in enumerate(ms)], timeout=60)
R["recv"] = hpcray.get([ms[0].run.remote("send", np.ones(100000), 1, "e"),
                        ms[1].run.remote("recv", np.ones(100000, np.float32), 0, "e")],
                       timeout=60)
R["after"] = hpcray.get([m.run.remote("allreduce", x, "SUM", "e") for m in ms], timeout=60)
R["missing"] = hpcray.get([m.run.remote("allreduce", x, "SUM", "e") for m in ms[:2]],
                          timeout=60)
emit(R)
'''


def test_gpu_group_error_paths_name_the_ranks(run_job) -> None:
    r, _ = run(run_job, GPU_ERRORS_JOB, n=4, timeout=180, env={"HPCRAY_NUM_GPUS": "1"})

    def all_err(results, *texts):
        return all(res[0] == "err" and all(t in res[2] for t in texts) for res in results)

    assert [j[2] for j in r["join"]] == ["staged"] * 3
    numpy_user, others = r["numpy"][0], r["numpy"][1:]
    assert all_err([numpy_user], "numpy array: backend 'nccl' moves device arrays",
                   "backend='mpi'"), numpy_user
    assert all_err(others, "rank(s) [1] passed invalid arguments"), others
    assert all_err(r["shape"], "ranks [0, 1]: float64 (4,); rank 2: float64 (5,)"), r["shape"]
    assert all_err(r["big_dtype"], "rank 0: float64 (1000,); ranks [1, 2]: float32 (1000,)")
    assert all_err(r["recv"], "float64 (100000,)", "float32 (100000,)"), r["recv"]
    assert all(res == ["ok", [3.0] * 4] for res in r["after"]), r["after"]
    assert all_err(r["missing"], "rank(s) [2] did not arrive", "ranks [0, 1] did"), r["missing"]


def test_distinct_gpus_without_nccl_are_staged_saying_why(run_job) -> None:
    r, _ = run(run_job, FAKE_DEVICE + DEVICE_MEMBER + '''
hpcray.init()
ms = [DevMember.options(num_gpus=1).remote(2, i) for i in range(2)]
joined = hpcray.get([m.join.remote("d") for m in ms], timeout=60)
xs = [np.arange(5000, dtype=np.float32) * (i + 1) for i in range(2)]
got = hpcray.get([m.allreduce.remote(x, "SUM", "d") for m, x in zip(ms, xs)], timeout=60)
emit({"joined": joined, "ok": [bool(same(g, xs[0] + xs[1])) for g in got]})
''', n=3, timeout=120, env={"HPCRAY_NUM_GPUS": "2"})
    for got in r["joined"]:
        # NCCL needs CuPy, which machines without a GPU lack (or a GPU, if CuPy is there)
        assert got[2] == "staged", got
        assert "NCCL is unavailable" in got[3] or "NCCL communicator failed" in got[3], got
        assert "share GPU" not in got[3], got
    assert r["ok"] == [True, True]


# a one-member group holds a GPU of its own: the NCCL path, on one GPU or (here) on the
# stand-in for CuPy's NCCL in tests/stand_ins, which copies as NCCL does with one rank
SOLO_BODY = '''
hpcray.init()
m = DevMember.options(num_gpus=0.5).remote(1, 0)
R = {"join": hpcray.get(m.join.remote("solo"), timeout=120), "failures": []}
fail = R["failures"].append
rng = np.random.default_rng(9)
# int16 and bool are staged: NCCL cannot reduce them (it moves them, as bytes)
for dtype in (np.float32, np.float64, np.int32, np.float16, np.int16, np.bool_):
    for shape in [(3, 4), (70000,), ()]:
        x = inputs(rng, 1, dtype, shape)[0] if dtype != np.bool_ else rng.random(shape) > 0.5
        x = np.asarray(x, dtype)
        ops = ["SUM", "MAX"] + (["AVG"] if np.dtype(dtype).kind == "f" else [])
        for op in ops:
            for name, ref in [("allreduce", m.allreduce.remote(x, op, "solo")),
                              ("reduce", m.reduce.remote(x, 0, op, "solo")),
                              ("reducescatter", m.reducescatter.remote([x], op, "solo"))]:
                got = hpcray.get(ref, timeout=60)
                if not same(got, x):
                    fail([name, str(np.dtype(dtype)), shape, op, where_differ(got, x)])
        if not same(hpcray.get(m.broadcast.remote(x, 0, "solo"), timeout=60), x):
            fail(["broadcast", str(np.dtype(dtype)), shape])
        got = hpcray.get(m.allgather.remote(x, "solo"), timeout=60)
        if len(got) != 1 or not same(got[0], x):
            fail(["allgather", str(np.dtype(dtype)), shape])
R["nccl_calls"] = hpcray.get(m.nccl_calls.remote(), timeout=60)
R["numpy"] = hpcray.get(m.run.remote("host_allreduce", np.ones(3), "solo"), timeout=60)
# (more checks here)
R["destroyed"] = hpcray.get(m.destroy.remote("solo"), timeout=60)
emit(R)
'''
SOLO_JOB = DEVICE_MEMBER + SOLO_BODY


def test_nccl_path_on_a_stand_in_nccl(run_job) -> None:
    """The NCCL path's own code (unique id round, communicator, dtype and op codes, counts,
    scratch copies, the staged fallback for dtypes NCCL cannot reduce) in a one-member
    group over tests/stand_ins' CuPy, on fake device arrays."""
    from conftest import ROOT

    stand_in = f"{ROOT}:{ROOT / 'tests' / 'stand_ins'}"
    r, _ = run(run_job, FAKE_DEVICE + SOLO_JOB, n=3, timeout=120,
               env={"HPCRAY_NUM_GPUS": "1", "PYTHONPATH": stand_in})
    rank, size, path, line = r["join"]
    assert (rank, size, path) == (0, 1, "nccl") and "holds a GPU of its own" in line, line
    assert r["failures"] == []
    assert r["nccl_calls"] == ["allGather", "allReduce", "broadcast", "reduce", "reduceScatter"]
    assert r["numpy"][0] == "err" and "numpy array: backend 'nccl'" in r["numpy"][2], r["numpy"]
    assert r["destroyed"] is False


@pytest.mark.parametrize("members", [2, 3])
def test_every_op_on_the_nccl_path_of_a_stand_in_nccl(run_job, members: int) -> None:
    """Members on distinct (fake) GPUs take the NCCL path; tests/stand_ins' NCCL reduces across
    them with NCCL's semantics (numpy), so op codes, dtype codes, counts, AVG as a sum and a
    division, reduce's root and reducescatter's parts are checked against numpy off the GPU."""
    from conftest import ROOT

    stand_in = f"{ROOT}:{ROOT / 'tests' / 'stand_ins'}"
    r, _ = run(run_job, FAKE_DEVICE + GPU_OPS_JOB, n=members + 1, args=[str(members)],
               timeout=300, env={"HPCRAY_NUM_GPUS": str(members), "PYTHONPATH": stand_in})
    for rank, (got_rank, size, path, line) in enumerate(r["join"]):
        assert (got_rank, size, path) == (rank, members, "nccl"), line
    assert r["failures"] == []
    assert r["barrier"] == list(range(members))
