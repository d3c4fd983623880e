"""Real GPU paths with CuPy: discovery, shares, IPC and host-staged transfers, stream order,
lifetimes. Skipped where CuPy or a GPU is missing (CI); run on a GPU machine, e.g. through
``python benchmarks/gpu.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import require_cupy_gpu
from test_core import is_error, run
from test_gpu_fake import ARRAYS_PRELUDE

cupy = require_cupy_gpu()

GPU_PRELUDE = ARRAYS_PRELUDE + '''
import cupy


def churn(n, rounds):
    """Integer work queued on a side stream (exact, so the host can check it)."""
    x = np.arange(n, dtype=np.int64)
    for _ in range(rounds):
        x = (x * 3 + 1) % 1000003
    return x


@hpcray.remote(num_gpus=0.5)
class Side(Inspector):
    def make(self, seed, shape, dtype="float64", fortran=False):
        a = cupy.asarray(make(seed, shape, dtype))
        return cupy.asfortranarray(a) if fortran else a

    def slow(self, n, rounds):
        # returned while the kernels may still run: the runtime must wait for them
        with cupy.cuda.Stream(non_blocking=True):
            x = cupy.arange(n, dtype=cupy.int64)
            for _ in range(rounds):
                x = (x * 3 + 1) % 1000003
        return x

    def describe(self, value):
        if isinstance(value, cupy.ndarray):
            return ["cupy", value.device.id, digest(value.get())]
        return super().describe(value)

    def used(self):
        cupy.cuda.runtime.deviceSynchronize()
        return cupy.get_default_memory_pool().used_bytes()

    def env(self):
        return [hpcray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                cupy.cuda.runtime.getDeviceCount()]
'''

IPC_JOB = '''
hpcray.init()
r = {}
node = hpcray.nodes()[0]
r["gpus"] = node["GPUs"]
r["total"] = hpcray.cluster_resources().get("GPU")
a, b = Side.remote(), Side.remote()
r["env"] = hpcray.get([a.env.remote(), b.env.remote()], timeout=120)
base = hpcray.get(a.used.remote(), timeout=60)

cases = [[(1 << 20,), "float32", False], [(333, 77), "float64", True], [(0,), "int8", False],
         [(), "complex128", False], [(64, 1 << 16), "uint8", False], [(5,), "int16", False]]
refs = [a.make.remote(i, tuple(s), d, f) for i, (s, d, f) in enumerate(cases)]
r["moved"] = hpcray.get([b.look.remote(x) for x in refs], timeout=120)
r["expected"] = [digest(make(i, tuple(s), d)) for i, (s, d, f) in enumerate(cases)]
r["paths"] = hpcray.get(b.last_paths.remote(len(cases)), timeout=60)
r["pins"] = hpcray.get(a.pins.remote(), timeout=60)  # b maps them: a keeps them pinned
r["mapped"] = hpcray.get(b.mapped.remote(), timeout=60)

# stream order: the consumer sees the producer's finished kernels
slow = a.slow.remote(1 << 22, 200)
r["slow"] = hpcray.get(b.look.remote(slow), timeout=120)
r["slow_expected"] = digest(churn(1 << 22, 200))

# mixed numpy and CuPy; the driver (it has the GPU) gets CuPy, or numpy on request
mixed = {"host": make(50, (100, 100)), "dev": cupy.asarray(make(51, (4096,)))}
r["mixed"] = hpcray.get(b.look.remote(hpcray.put(mixed)), timeout=120)
r["mixed_expected"] = {"host": ["ndarray", digest(make(50, (100, 100)))],
                       "dev": ["cupy", 0, digest(make(51, (4096,)))]}
got = hpcray.get(refs[0], timeout=60)
r["driver"] = [type(got).__module__.split(".")[0], digest(got.get())]
host = hpcray.get(refs[0], timeout=60, to_host=True)
r["driver_host"] = [type(host).__module__.split(".")[0], digest(host)]

# arguments are copied when submitted: changing them afterwards changes nothing sent
arr = cupy.asarray(make(60, (1 << 16,)))
sent = b.look.remote(arr)
arr.fill(0)
r["arg"] = hpcray.get(sent, timeout=60)
r["arg_expected"] = digest(make(60, (1 << 16,)))

del refs, slow, got, sent
r["freed"] = poll(lambda: hpcray.get(a.used.remote(), timeout=60) <= base)
r["unpinned"] = poll(lambda: hpcray.get([a.pins.remote(), b.mapped.remote()], timeout=60) == [0, 0])
emit(r)
'''


def test_shared_gpu_ipc(run_job):
    r, _ = run(run_job, GPU_PRELUDE + IPC_JOB, n=3, timeout=300)
    [gpu] = r["gpus"]
    assert gpu["memory"] > 0 and gpu["uuid"].startswith("GPU-") and gpu["Ranks"] == [0, 1, 2]
    assert r["total"] == pytest.approx(1.0)
    for ids, visible, count in r["env"]:
        assert ids == [gpu["id"]] and visible.split(",")[0] == gpu["uuid"] and count >= 1
    assert [m[2] for m in r["moved"]] == r["expected"]
    assert all(m[0] == "cupy" and m[1] == 0 for m in r["moved"])
    assert r["paths"] == ["ipc", "ipc", "empty", "ipc", "ipc", "ipc"]  # (0,): nothing to move
    assert r["pins"] == 5 and r["mapped"] == 5  # the 5 non-empty arrays, mapped (one GPU)
    assert r["slow"][2] == r["slow_expected"]
    assert r["mixed"] == r["mixed_expected"]
    assert r["driver"] == ["cupy", r["expected"][0]]
    assert r["driver_host"] == ["numpy", r["expected"][0]]
    assert r["arg"][2] == r["arg_expected"]
    assert r["freed"] is True and r["unpinned"] is True


FORCED_JOB = '''
hpcray.init()
r = {}
a, b = Side.remote(), Side.remote()
sizes = [1, 1 << 16, (1 << 16) + 7, 3_000_001, 40 << 20]
ra = [a.make.remote(i, (s,), "uint8") for i, s in enumerate(sizes)]
rb = [b.make.remote(i + 9, (s,), "uint8") for i, s in enumerate(sizes)]
got = hpcray.get([b.look.remote(ra), a.look.remote(rb)] * 2, timeout=180)
r["got"] = [[m[2] for m in side] for side in got]
r["expected"] = [[digest(make(i, (s,), "uint8")) for i, s in enumerate(sizes)],
                 [digest(make(i + 9, (s,), "uint8")) for i, s in enumerate(sizes)]] * 2
r["paths"] = sorted(set(hpcray.get(a.last_paths.remote(5), timeout=60)
                        + hpcray.get(b.last_paths.remote(5), timeout=60)))
from hpcray._private.device.registry import cuda_aware_mpi
r["cuda_aware"] = cuda_aware_mpi()
emit(r)
'''


@pytest.mark.parametrize("forced", ["staged", "mpi", "nccl"],
                         ids=["staged", "direct-mpi", "nccl-refused"])
def test_forced_paths_on_one_gpu(run_job, forced):
    """staged runs as asked; MPI only if CUDA-aware (else staged); NCCL never on one GPU."""
    r, _ = run(run_job, GPU_PRELUDE + FORCED_JOB, n=3, timeout=300,
               env={"HPCRAY_GPU_TRANSPORT": forced, "HPCRAY_STAGING_CHUNK": str(1 << 20)})
    assert r["got"] == r["expected"]
    expected = "mpi" if forced == "mpi" and r["cuda_aware"] else "staged"
    assert r["paths"] == [expected]


def test_gpu_request_beyond_the_shares_is_refused(run_job):
    r, _ = run(run_job, GPU_PRELUDE + '''
hpcray.init()
f = hpcray.remote(lambda: 1)
emit({"one": outcome(lambda: hpcray.get(f.options(num_gpus=1).remote(), timeout=60)),
      "half": outcome(lambda: hpcray.get(f.options(num_gpus=0.5).remote(), timeout=60))})
''', n=3, timeout=120)
    assert is_error(r["one"], "Infeasible", "GPU")
    assert r["half"] == ["ok", 1]


def test_gpu_pipeline_example():
    """examples/gpu_pipeline.py: CuPy batches between two actors sharing the GPU, checked
    against numpy by the example itself."""
    from conftest import ROOT, run_process

    proc = run_process([sys.executable, "-m", "hpcray.cli", "run", "-n", "3",
                        str(ROOT / "examples" / "gpu_pipeline.py")], 120, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "largest error" in proc.stdout, proc.stdout + proc.stderr
