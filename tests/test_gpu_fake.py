"""GPU scheduling and device-array transfers in real MPI jobs, without a GPU.

The jobs declare GPUs (HPCRAY_NUM_GPUS) and move ``FakeDeviceArray``s, which expose
``__cuda_array_interface__`` over shared host memory: path choice, (handle, offset)
bookkeeping, handle caching, release of exports, staging in chunks and lifetimes all run
for real. tests/gpu/ runs the same paths with CuPy on a GPU.
"""

from __future__ import annotations

import pytest
from test_core import PRELUDE, is_error, run

# shared with tests/gpu: array helpers and the methods every test actor has
ARRAYS_PRELUDE = PRELUDE + '''
import glob
import hashlib

import numpy as np

from hpcray._private.core.context import current


def digest(a):
    a = np.asarray(a)
    return [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(), a.dtype.str,
            list(a.shape)]


def make(seed, shape, dtype="float64"):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 1000).astype(dtype)


class Inspector:
    def look(self, value):
        """What arrived: kind and digest of every array in value (refs are fetched)."""
        if isinstance(value, hpcray.ObjectRef):
            value = hpcray.get(value)
        if isinstance(value, dict):
            return {k: self.look(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.look(v) for v in value]
        return self.describe(value)

    def describe(self, value):
        return [type(value).__name__, digest(value)]

    def last_paths(self, n):
        return [entry[0] for entry in list(current().devices.log)[-n:]]

    def opened(self):
        return len(current().devices.opened)

    def pins(self):
        return len(current().devices.pins)

    def gpu(self):
        return current().ranks[current().rank].gpus[0].id

    def mapped(self):
        """Live arrays mapping other ranks' memory."""
        return len(current().devices.leases)

    def owners(self):
        return sorted({key[0] for key in current().devices.opened})

    def rank(self):
        return hpcray.get_runtime_context().get_rank()
'''

FAKE_PRELUDE = ARRAYS_PRELUDE + '''
import fakegpu


@hpcray.remote
class Holder(Inspector):
    def make(self, seed, shape, dtype="float64"):
        return fakegpu.asarray(make(seed, shape, dtype))

    def make_pair(self, seed):
        # two small arrays carved from one block: one IPC handle, two offsets
        return fakegpu.asarray(make(seed, (100,))), fakegpu.asarray(make(seed + 1, (50,)))

    def describe(self, value):
        if isinstance(value, fakegpu.FakeDeviceArray):
            return ["FakeDeviceArray", digest(value.get())]
        return super().describe(value)

    def blocks(self):
        return len(glob.glob(f"/dev/shm/hpcray-fakegpu-{os.getpid()}-*"))
'''

SHARED_GPU_JOB = '''
hpcray.init()
r = {}
t0 = time.monotonic()
node = hpcray.nodes()[0]
r["gpus"] = [[g["id"], g["Ranks"]] for g in node["GPUs"]]
r["uuid"] = node["GPUs"][0]["uuid"] or "0"
r["gpu_total"] = hpcray.cluster_resources().get("GPU")
r["driver_ids"] = hpcray.get_gpu_ids()


@hpcray.remote(num_gpus=0.25)
def quarter():
    return [hpcray.get_runtime_context().get_rank(), hpcray.get_gpu_ids(),
            os.environ["CUDA_VISIBLE_DEVICES"]]


@hpcray.remote
def cpu_only():
    return hpcray.get_gpu_ids()


r["quarters"] = hpcray.get([quarter.remote() for _ in range(12)], timeout=60)
r["cpu_only"] = hpcray.get(cpu_only.remote(), timeout=60)
r["half"] = outcome(lambda: hpcray.get(quarter.options(num_gpus=0.5).remote(), timeout=60))

a = Holder.options(num_gpus=0.25).remote()
b = Holder.options(num_gpus=0.25).remote()
r["ranks"] = hpcray.get([a.rank.remote(), b.rank.remote()], timeout=60)
hpcray.get(a.make.remote(0, (1,)), timeout=60)  # the pool's first block: it stays, as in CuPy
before = hpcray.get(a.blocks.remote(), timeout=60)

shapes = [[(256,), "float64"], [(3, 1 << 17), "float32"], [(0,), "int8"], [(), "float64"],
          [(7, 5, 3), "complex64"], [(1 << 20,), "uint8"]]
refs = [a.make.remote(i, tuple(s), d) for i, (s, d) in enumerate(shapes)]
r["moved"] = hpcray.get([b.look.remote(ref) for ref in refs], timeout=60)
r["expected"] = [digest(make(i, tuple(s), d)) for i, (s, d) in enumerate(shapes)]
r["paths"] = hpcray.get(b.last_paths.remote(len(shapes)), timeout=60)

pair = a.make_pair.remote(100)
opened_before = hpcray.get(b.opened.remote(), timeout=60)
r["pair"] = hpcray.get(b.look.remote(pair), timeout=60)
r["pair_expected"] = [digest(make(100, (100,))), digest(make(101, (50,)))]
r["pair_new_handles"] = hpcray.get(b.opened.remote(), timeout=60) - opened_before
# b maps a's memory (same GPU: no copy), so a keeps its exports pinned while b holds them
r["pins_held"] = hpcray.get(a.pins.remote(), timeout=60)
r["b_maps"] = hpcray.get(b.mapped.remote(), timeout=60)

# a mapped import passed on by the rank that maps it: c maps a's memory directly (IPC
# memory cannot be exported again)
c = Holder.options(num_gpus=0.25).remote()
echo = hpcray.remote(num_gpus=0.25)(lambda x: x)  # a task's result is not copied
passed = echo.remote(a.make.remote(300, (4096,)))
r["passed"] = hpcray.get(c.look.remote(passed), timeout=60)
r["passed_expected"] = ["FakeDeviceArray", digest(make(300, (4096,)))]
r["passed_owners"] = hpcray.get(c.owners.remote(), timeout=60)
r["c_path"] = hpcray.get(c.last_paths.remote(1), timeout=60)

# mixed numpy and device arrays in one value
host = make(7, (300, 301))
mixed = {"host": host, "dev": fakegpu.asarray(make(8, (1000,))), "n": 3}
r["mixed"] = hpcray.get(b.look.remote(hpcray.put(mixed)), timeout=60)
r["mixed_expected"] = {"host": ["ndarray", digest(host)],
                       "dev": ["FakeDeviceArray", digest(make(8, (1000,)))], "n": ["int", digest(3)]}

# the driver has the GPU too: device arrays come back as device arrays, or numpy on request
got = hpcray.get(refs[1], timeout=60)
r["driver_get"] = [type(got).__name__, digest(got.get())]
host_copy = hpcray.get(refs[1], timeout=60, to_host=True)
r["driver_to_host"] = [type(host_copy).__name__, digest(host_copy)]

# put() and arguments copy: changing the array afterwards changes nothing sent
arr = fakegpu.asarray(make(9, (5000,)))
ref = hpcray.put(arr)
direct = b.look.remote(arr)
arr.fill_from(0.0)
r["after_mutation"] = hpcray.get([b.look.remote(ref), direct], timeout=60)
r["original"] = digest(make(9, (5000,)))

# the producer's memory goes when the last ref does
del refs, pair, got, ref, direct, passed
r["blocks_freed"] = poll(lambda: hpcray.get(a.blocks.remote(), timeout=60) <= before)
r["pins_after"] = poll(lambda: hpcray.get(a.pins.remote(), timeout=60) == 0)
r["unmapped"] = poll(lambda: hpcray.get([b.mapped.remote(), c.mapped.remote()],
                                        timeout=60) == [0, 0])
r["seconds"] = time.monotonic() - t0
emit(r)
'''


def test_shared_gpu_scheduling_and_ipc_transfers(run_job):
    r, _ = run(run_job, FAKE_PRELUDE + SHARED_GPU_JOB, n=5, timeout=120,
               env={"HPCRAY_NUM_GPUS": "1"})
    assert r["gpus"] == [["0", [0, 1, 2, 3, 4]]]
    assert r["gpu_total"] == pytest.approx(1.0)
    assert r["driver_ids"] == ["0"]
    assert {q[0] for q in r["quarters"]} <= {1, 2, 3, 4}
    # CUDA_VISIBLE_DEVICES names the rank's GPU first (by UUID where NVML sees a real one)
    assert all(q[1] == ["0"] and q[2].split(",")[0] in ("0", r["uuid"]) for q in r["quarters"])
    assert r["cpu_only"] == []
    assert is_error(r["half"], "Infeasible", "GPU")
    assert r["ranks"][0] != r["ranks"][1]
    assert [m[1] for m in r["moved"]] == r["expected"]
    assert all(m[0] == "FakeDeviceArray" for m in r["moved"])
    assert r["paths"] == ["ipc", "ipc", "empty", "ipc", "ipc", "ipc"]  # (0,): nothing to move
    assert [p[1] for p in r["pair"]] == r["pair_expected"]
    assert r["pair_new_handles"] <= 1  # one block: one opened handle (maybe cached already)
    assert r["pins_held"] >= 5 and r["b_maps"] >= 5  # 5 non-empty arrays, then the pair
    assert r["passed"] == r["passed_expected"]
    assert r["passed_owners"] == [r["ranks"][0]] and r["c_path"] == ["ipc"]
    assert r["pins_after"] is True and r["unmapped"] is True
    assert r["mixed"] == r["mixed_expected"]
    assert r["driver_get"] == ["FakeDeviceArray", r["expected"][1]]
    assert r["driver_to_host"] == ["ndarray", r["expected"][1]]
    assert [m[1] for m in r["after_mutation"]] == [r["original"]] * 2
    assert r["blocks_freed"] is True, r["seconds"]


FORCED_JOB = '''
hpcray.init()
r = {}
share = float(os.environ.get("TEST_GPU_SHARE", "0.5"))
a = Holder.options(num_gpus=share).remote()
b = Holder.options(num_gpus=share).remote()
r["gpus"] = hpcray.get([a.gpu.remote(), b.gpu.remote()], timeout=60)
sizes = [1, 65536, 65537, 1_000_003, 3 << 20]
ra = [a.make.remote(i, (s,), "uint8") for i, s in enumerate(sizes)]
rb = [b.make.remote(i + 50, (s,), "uint8") for i, s in enumerate(sizes)]
# both directions at once, many times over: two senders never wait on each other
crossed = []
for _ in range(3):
    crossed += [b.look.remote(ra), a.look.remote(rb)]
got = hpcray.get(crossed, timeout=90)
r["crossed"] = [got[i:i + 2] for i in range(0, len(got), 2)]
r["expected"] = [[["FakeDeviceArray", digest(make(i, (s,), "uint8"))] for i, s in enumerate(sizes)],
                 [["FakeDeviceArray", digest(make(i + 50, (s,), "uint8"))]
                  for i, s in enumerate(sizes)]]
r["paths"] = sorted(set(hpcray.get(a.last_paths.remote(5), timeout=60)
                        + hpcray.get(b.last_paths.remote(5), timeout=60)))
r["mapped"] = hpcray.get([a.mapped.remote(), b.mapped.remote()], timeout=60)
pins = lambda: hpcray.get([a.pins.remote(), b.pins.remote()], timeout=60)
r["pins"] = pins() if r["mapped"] != [0, 0] else poll(lambda: pins() == [0, 0]) and [0, 0]
emit(r)
'''


@pytest.mark.parametrize("path,ipc_map", [("staged", 1), ("mpi", 1), ("ipc", 0), ("ipc", 1)],
                         ids=["staged", "direct-mpi", "ipc-copy", "ipc-map"])
def test_forced_paths_in_chunks_both_ways(run_job, path, ipc_map):
    r, _ = run(run_job, FAKE_PRELUDE + FORCED_JOB, n=3, timeout=120,
               env={"HPCRAY_NUM_GPUS": "1", "HPCRAY_GPU_TRANSPORT": path,
                    "HPCRAY_STAGING_CHUNK": "65536", "HPCRAY_IPC_MAP": str(ipc_map)})
    assert r["gpus"] == ["0", "0"]
    assert r["crossed"] == [r["expected"]] * 3
    assert r["paths"] == [path]
    if path == "ipc" and ipc_map:  # each maps the other's arrays, pinned there meanwhile
        assert r["mapped"] == [5, 5] and r["pins"] == [5, 5]
    else:  # copies: nothing mapped, every export unpinned at once
        assert r["mapped"] == [0, 0] and r["pins"] == [0, 0]


@pytest.mark.parametrize("gpus", [2, 1], ids=["distinct-gpus", "shared-gpu-refused"])
def test_nccl_channels_both_ways(run_job, gpus):
    """Point-to-point channels (a FIFO stands in for NCCL: joining and sending both wait for
    the peer) between ranks on distinct GPUs, both directions at once; never on a shared GPU."""
    r, _ = run(run_job, FAKE_PRELUDE + FORCED_JOB, n=3, timeout=120,
               env={"HPCRAY_NUM_GPUS": str(gpus), "HPCRAY_GPU_TRANSPORT": "nccl",
                    "TEST_GPU_SHARE": "1" if gpus == 2 else "0.5"})
    assert sorted(r["gpus"]) == (["0", "1"] if gpus == 2 else ["0", "0"])
    assert r["crossed"] == [r["expected"]] * 3
    assert r["paths"] == (["nccl"] if gpus == 2 else ["staged"])
    assert r["mapped"] == [0, 0] and r["pins"] == [0, 0]


NO_GPU_JOB = '''
hpcray.init()
r = {}
h = Holder.remote()
ref = h.make.remote(3, (64, 64))
r["get"] = outcome(lambda: hpcray.get(ref, timeout=60))
host = hpcray.get(ref, timeout=60, to_host=True)
r["to_host"] = [type(host).__name__, digest(host)]
r["expected"] = digest(make(3, (64, 64)))
other = Holder.remote()
r["worker_without_gpu"] = outcome(lambda: hpcray.get(other.look.remote(ref), timeout=60))


@hpcray.remote(num_gpus=1)
def needs_gpu():
    return 1


r["gpu_task"] = outcome(lambda: hpcray.get(needs_gpu.remote(), timeout=60))
r["nodes_gpus"] = hpcray.nodes()[0]["GPUs"]
r["ids"] = hpcray.get_gpu_ids()
emit(r)
'''


def test_job_without_gpus_gives_clear_errors(run_job):
    r, _ = run(run_job, FAKE_PRELUDE + NO_GPU_JOB, n=3, timeout=120,
               env={"HPCRAY_NUM_GPUS": "0"})  # also on a machine with GPUs
    assert is_error(r["get"], "DeviceUnavailableError", "rank 0", "no GPU", "to_host=True")
    assert r["to_host"] == ["ndarray", r["expected"]]
    assert is_error(r["worker_without_gpu"], "TaskError(DeviceUnavailableError)", "no GPU",
                    "num_gpus")
    assert is_error(r["gpu_task"], "Infeasible", "no GPUs", "HPCRAY_NUM_GPUS")
    assert r["nodes_gpus"] == []
    assert r["ids"] == []
