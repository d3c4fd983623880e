"""GPU logic without MPI or a GPU: discovery filters, rank-to-GPU mapping, transfer path
choice, and device arrays through serialization (with the fake device array)."""

from __future__ import annotations

import os
import random

import fakegpu
import numpy as np
import pytest

from hpcray._private.core.scheduler import Infeasible, Request, Scheduler
from hpcray._private.core.serialization import deserialize, fits_inline, has_device, own, serialize
from hpcray._private.device import discovery as gpu
from hpcray._private.device import registry as device
from hpcray._private.device.transfer import PATHS, Where, choose_path
from hpcray.exceptions import DeviceUnavailableError

NODE = [gpu.Gpu(str(i), "H100", 80 << 30, f"GPU-{i}aaa") for i in range(4)]


# -- discovery -------------------------------------------------------------------------------
def test_visible_filter_by_index_uuid_and_empty():
    assert [g.id for g in gpu.select_visible(NODE, ["2", "0"])] == ["2", "0"]
    chosen = gpu.select_visible(NODE, ["GPU-3a"])
    assert [g.uuid for g in chosen] == ["GPU-3aaa"] and chosen[0].id == "GPU-3a"
    assert gpu.select_visible(NODE, []) == []
    assert gpu.select_visible(NODE, None) == NODE
    assert gpu._visible_filter({"CUDA_VISIBLE_DEVICES": "1, 3"}) == ["1", "3"]
    assert gpu._visible_filter({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpu._visible_filter({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert gpu._visible_filter({"SLURM_STEP_GPUS": "0,2"}) == ["0", "2"]
    assert gpu._visible_filter({"SLURM_JOB_GPUS": "5", "CUDA_VISIBLE_DEVICES": "0"}) == ["0"]
    assert gpu._visible_filter({}) is None


def test_declared_gpus_stand_in_for_undiscovered_ones(monkeypatch):
    # without NVML devices declared GPUs are anonymous, named as visible says
    monkeypatch.setattr(gpu, "_nvml_gpus", list)
    assert [g.id for g in gpu.discover(2, env={})] == ["0", "1"]
    assert [g.id for g in gpu.discover(2, env={"CUDA_VISIBLE_DEVICES": "4,6"})] == ["4", "6"]
    assert gpu.discover(None, env={}) == []
    assert gpu.discover(0, env={}) == []
    with pytest.raises(ValueError, match="num_gpus"):
        gpu.discover(-2, env={})


@pytest.mark.parametrize("workers", range(1, 10))
@pytest.mark.parametrize("count", range(1, 5))
def test_assign_shares_each_gpu_exactly_once(workers, count):
    gpus = NODE[:count]
    out = gpu.assign(gpus, workers)
    assert len(out) == workers
    total: dict[str, float] = {}
    for a in out:
        assert a.gpus, "every worker gets a GPU"
        for g in a.gpus:
            total[g.id] = total.get(g.id, 0.0) + (a.share if workers >= count else 1.0)
        if workers >= count:
            assert len(a.gpus) == 1
        else:
            assert a.share == len(a.gpus)
    assert set(total) == {g.id for g in gpus}
    assert all(v == pytest.approx(1.0) for v in total.values())


def test_four_ranks_on_one_gpu_advertise_a_quarter_each():
    assert [a.share for a in gpu.assign(NODE[:1], 4)] == [0.25] * 4
    assert gpu.assign([], 3) == [gpu.Assignment()] * 3


def test_visible_devices_puts_the_ranks_own_gpu_first():
    assert gpu.visible_devices([NODE[2]], NODE) == "GPU-2aaa,GPU-0aaa,GPU-1aaa,GPU-3aaa"
    anonymous = [gpu.Gpu("0"), gpu.Gpu("1")]
    assert gpu.visible_devices([anonymous[1]], anonymous) == "1,0"


def test_fractional_gpu_requests_pack_onto_shares():
    sched = Scheduler()
    for rank in (1, 2, 3, 4):
        sched.add_rank(rank, "node-0", {"CPU": 4.0, "GPU": 0.25})
    for i in range(8):
        sched.submit(Request(i, {"GPU": 0.25}))
    placed = [rank for _, rank in sched.schedule()]
    assert sorted(placed) == [1, 2, 3, 4]  # one quarter per rank at a time
    with pytest.raises(Infeasible, match="no live rank"):
        sched.check_feasible({"GPU": 0.5})


def test_gpu_request_without_gpus_says_what_to_do():
    sched = Scheduler()
    sched.add_rank(1, "node-0", {"CPU": 1.0})
    with pytest.raises(Infeasible, match="This job has no GPUs.*num_gpus"):
        sched.check_feasible({"GPU": 1.0})


# -- transfer paths --------------------------------------------------------------------------
def test_path_choice_by_placement():
    a = Where("n0", "GPU-a", False)
    same_gpu = Where("n0", "GPU-a", False)
    other_gpu_same_node = Where("n0", "GPU-b", False)
    far = Where("n1", "GPU-c", False)
    cupy_paths = ("ipc", "mpi", "nccl")
    assert choose_path(a, same_gpu, cupy_paths) == "ipc"
    assert choose_path(a, other_gpu_same_node, cupy_paths) == "ipc"
    assert choose_path(a, far, cupy_paths) == "nccl"
    assert choose_path(a, far, ("ipc", "mpi")) == "staged"
    aware = Where("n0", "GPU-a", True)
    assert choose_path(aware, Where("n1", "GPU-c", True), cupy_paths) == "mpi"
    # one side's MPI is not CUDA-aware: never hand it a device pointer
    assert choose_path(aware, far, ("ipc", "mpi")) == "staged"
    # a receiver without a GPU gets host bytes
    assert choose_path(a, Where("n0", "", False), cupy_paths) == "staged"


def test_forced_paths_fall_back_where_they_cannot_run():
    a, b = Where("n0", "GPU-a", False), Where("n0", "GPU-a", False)
    paths = ("ipc", "mpi", "nccl")
    assert choose_path(a, b, paths, forced="staged") == "staged"
    assert choose_path(a, b, paths, forced="nccl") == "staged"  # NCCL refuses a shared GPU
    assert choose_path(a, b, paths, forced="mpi") == "staged"   # MPI not CUDA-aware
    assert choose_path(a, b, paths, host_memory=True, forced="mpi") == "mpi"
    assert choose_path(a, Where("n1", "GPU-z", False), paths, forced="ipc") == "staged"
    with pytest.raises(ValueError, match="HPCRAY_GPU_TRANSPORT"):
        choose_path(a, b, paths, forced="carrier-pigeon")


def test_every_choice_is_a_known_path_and_respects_its_preconditions():
    rng = random.Random(7)
    for _ in range(2000):
        src = Where(rng.choice("ab"), rng.choice(["", "g1", "g2"]), rng.random() < 0.5)
        dst = Where(rng.choice("ab"), rng.choice(["", "g1", "g2"]), rng.random() < 0.5)
        paths = tuple(p for p in ("ipc", "mpi", "nccl") if rng.random() < 0.7)
        host_memory = rng.random() < 0.2
        forced = rng.choice(("auto", *PATHS))
        path = choose_path(src, dst, paths, host_memory, forced)
        assert path in PATHS
        if path != "staged":
            assert path in paths and dst.gpu
        if path == "ipc":
            assert src.node_id == dst.node_id and src.gpu
        if path == "mpi":
            assert host_memory or (src.cuda_mpi and dst.cuda_mpi)
        if path == "nccl":
            assert src.gpu and src.gpu != dst.gpu


# -- device arrays through serialization -----------------------------------------------------
@pytest.fixture
def with_gpu():
    device.set_has_gpu(True)
    yield
    device.set_has_gpu(False)


def test_fake_arrays_travel_beside_the_pickle(with_gpu):
    rng = np.random.default_rng(1)
    host = rng.standard_normal((64, 33))
    dev = fakegpu.asarray(rng.integers(0, 1000, (128, 7)).astype(np.int32))
    value = {"host": host, "dev": dev, "list": [dev, 3], "name": "x"}
    header, buffers, _ = serialize(value)
    assert has_device(buffers)
    assert not fits_inline(header, buffers, 1 << 30)  # device values never travel inline
    kinds = [type(b).__name__ for b in buffers]
    # the same array twice is sent once (pickle's memo), as numpy arrays are
    assert kinds.count("DeviceBuffer") == 1 and kinds.count("memoryview") == 1
    assert len(header) < 1000  # the arrays' bytes are not in the pickle
    back = deserialize(header, buffers)
    assert back["dev"] is dev  # same rank, same memory: zero copy
    np.testing.assert_array_equal(back["host"], host)
    assert back["list"][0] is back["dev"]


def test_non_contiguous_and_odd_shapes(with_gpu):
    for shape, dtype in [((), np.float64), ((0,), np.int8), ((3, 0, 2), np.float32),
                         ((5, 4, 3), np.complex64), ((1,), np.uint16)]:
        arr = np.arange(int(np.prod(shape)), dtype=np.int64).astype(dtype).reshape(shape)
        header, buffers, _ = serialize(fakegpu.asarray(arr))
        # as if received on another rank: a fresh uint8 allocation with the bytes
        [buf] = buffers
        fresh = buf.backend.alloc(buf.nbytes)
        buf.backend.copy_ptr(fresh.ptr, buf.ptr, buf.nbytes)
        got = deserialize(header, [fresh])
        assert got.shape == arr.shape and got.dtype == arr.dtype
        np.testing.assert_array_equal(got.get(), arr)


def test_host_copies_need_a_gpu_or_to_host():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    header, _, _ = serialize(fakegpu.asarray(arr))
    host = [device.HostCopy("fake", np.frombuffer(arr.tobytes(), np.uint8).copy())]
    with pytest.raises(DeviceUnavailableError, match="no GPU.*to_host=True"):
        deserialize(header, host)
    with device.host_copies():
        got = deserialize(header, host)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, arr)
    device.set_has_gpu(True)
    try:
        uploaded = deserialize(header, host)  # a rank with a GPU uploads a host copy
    finally:
        device.set_has_gpu(False)
    np.testing.assert_array_equal(uploaded.get(), arr)


def test_own_copies_device_and_host_buffers(with_gpu):
    dev = fakegpu.asarray(np.arange(10.0))
    header, buffers, _ = serialize([dev, np.arange(100000.0)])
    copies = own(buffers)
    dev.fill_from(-1.0)
    got = deserialize(header, copies)
    np.testing.assert_array_equal(got[0].get(), np.arange(10.0))


def test_pool_sub_allocates_so_one_handle_names_a_block():
    backend = device.backend("fake")
    a, b = fakegpu.asarray(np.ones(100)), fakegpu.asarray(np.zeros(100))
    (ha, oa, ia), (hb, ob, ib) = (backend.ipc_export(backend.export(x)[0]) for x in (a, b))
    assert ha == hb and ia == ib and ob > oa  # same allocation, different offsets
    base = backend.ipc_open(ha)
    try:
        view = np.frombuffer(backend.opened[base][0], np.uint8)
        np.testing.assert_array_equal(view[ob:ob + 800].view(np.float64), np.zeros(100))
        np.testing.assert_array_equal(view[oa:oa + 800].view(np.float64), np.ones(100))
    finally:
        backend.ipc_close(base)
    path = ha.decode()
    assert os.path.exists(path)
    del a, b, view
    fakegpu.pool.current = None
    import gc

    gc.collect()
    assert not os.path.exists(path), "a block is freed with its last array"
