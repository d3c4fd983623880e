"""hpcray.collective's "nccl" backend on a real GPU: every operation staged between ranks
sharing the GPU (CuPy arrays and CUDA torch tensors) against numpy; the NCCL path itself in
a one-member group (one GPU cannot give two members GPUs of their own); NCCL forced onto a
shared GPU, which NCCL refuses, falling back to staging; TorchTrainer with use_gpu=True and
two workers on the GPU (gloo). Skipped where CuPy or a GPU is missing (CI).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import require_cupy_gpu
from test_collective_gpu import DEVICE_MEMBER, GPU_OPS_JOB, SOLO_BODY
from test_core import run
from test_train import HAVE, TORCH_GPU_JOB, check_torch_gpu_job

cupy = require_cupy_gpu()

CUPY_DEVICE = '''
import cupy
DEV = cupy.asarray
HOST = cupy.asnumpy


def TORCH_CUDA():
    """Whether to run CUDA torch tensors too (asked after init(), which maps the GPUs)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
'''

CUPY_MEMBER = CUPY_DEVICE + DEVICE_MEMBER + '''
@hpcray.remote(num_cpus=1, num_gpus=0.25)
class CupyMember(DevMember._cls):
    def strided_allreduce(self, x, name="default"):
        wide = cupy.zeros(2 * x.size, x.dtype)
        wide[::2] = cupy.asarray(x)   # a non-contiguous view: reduced through a copy
        col.allreduce(wide[::2], name)
        return cupy.asnumpy(wide)

    def torch_allgather(self, x, name="default"):
        import torch
        out = [torch.zeros(x.shape, dtype=torch.float32, device="cuda")
               for _ in range(col.get_collective_group_size(name))]
        col.allgather(out, torch.from_numpy(x).cuda(), name)
        return [o.cpu().numpy() for o in out]
'''


def test_every_op_staged_on_a_shared_gpu(run_job) -> None:
    r, _ = run(run_job, CUPY_DEVICE + GPU_OPS_JOB, n=3, args=["2"], timeout=180)
    for rank, (got_rank, size, path, line) in enumerate(r["join"]):
        assert (got_rank, size, path) == (rank, 2, "staged"), line
        assert "share GPU GPU-" in line, line
    assert r["failures"] == [], r["failures"]
    assert r["barrier"] == [0, 1]
    assert r.get("torch", [True, True]) == [True, True]  # CUDA tensors where torch has CUDA
    assert r["destroyed"] == [False, False]


NCCL_SOLO_JOB = CUPY_MEMBER + SOLO_BODY.replace("DevMember.options", "CupyMember.options").replace(
    "# (more checks here)", '''
x = inputs(rng, 1, np.float32, (1000,))[0]
R["strided"] = bool(same(hpcray.get(m.strided_allreduce.remote(x, "solo"), timeout=60)[::2], x))
if TORCH_CUDA():
    got = hpcray.get(m.torch_allgather.remote(x, "solo"), timeout=60)
    R["torch"] = len(got) == 1 and bool(same(got[0], x))
''')


def test_nccl_path_in_a_one_member_group(run_job) -> None:
    r, _ = run(run_job, NCCL_SOLO_JOB, n=3, timeout=180)
    rank, size, path, line = r["join"]
    assert (rank, size, path) == (0, 1, "nccl"), line
    assert r["failures"] == [], r["failures"]
    assert r["numpy"][0] == "err" and "numpy array: backend 'nccl'" in r["numpy"][2], r["numpy"]
    assert r["strided"] is True
    assert r.get("torch", True) is True
    assert r["destroyed"] is False


FORCED_NCCL_JOB = CUPY_MEMBER + '''
hpcray.init()
ms = [CupyMember.remote(2, r) for r in range(2)]
R = {"join": hpcray.get([m.join.remote("f", timeout_s=40) for m in ms], timeout=120)}
rng = np.random.default_rng(11)
xs = inputs(rng, 2, np.float32, (100000,))
got = hpcray.get([m.allreduce.remote(x, "SUM", "f") for m, x in zip(ms, xs)], timeout=60)
R["allreduce"] = [bool(same(g, xs[0] + xs[1])) for g in got]
got = hpcray.get([m.strided_allreduce.remote(x, "f") for m, x in zip(ms, xs)], timeout=60)
R["strided"] = [bool(same(g[::2], xs[0] + xs[1]) and not g[1::2].any()) for g in got]
emit(R)
'''


def test_nccl_forced_onto_a_shared_gpu_falls_back_to_staging(run_job) -> None:
    """NCCL refuses two ranks on one GPU (NCCL_ERROR_INVALID_USAGE): every member falls
    back to staging, saying why, and the group works."""
    r, proc = run(run_job, FORCED_NCCL_JOB, n=3, timeout=180,
                  env={"HPCRAY_COLLECTIVE_GPU_PATH": "nccl"})
    for rank, size, path, line in r["join"]:
        assert path == "staged", line
        assert "NCCL communicator failed on rank(s) [" in line, line
    assert "staging through host memory instead" in proc.stderr + proc.stdout
    assert r["allreduce"] == [True, True]
    assert r["strided"] == [True, True]


@pytest.mark.skipif(not HAVE["torch"], reason="torch not installed")
def test_torch_trainer_use_gpu_two_workers_on_one_gpu(run_job, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    r, proc = run(run_job, TORCH_GPU_JOB, n=3, args=[str(tmp_path)], timeout=180)
    check_torch_gpu_job(r, proc.stdout, "cuda:0")
