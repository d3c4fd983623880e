"""hpcray.data's pure logic in-process (no MPI): blocks, batching, sorting, grouping,
aggregation, row arithmetic and read planning, on random data against numpy/pandas."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

from hpcray.data import aggregate as agg
from hpcray.data import block as B
from hpcray.data import datasource as S
from hpcray.data.alltoall import row_pieces
from hpcray.data.split import _deal, part_sizes

pd = pytest.importorskip("pandas")
rng = np.random.default_rng(0)


def random_blocks(n_blocks: int, seed: int) -> list[dict]:
    r = np.random.default_rng(seed)
    out, start = [], 0
    for _ in range(n_blocks):
        n = int(r.integers(0, 40))
        out.append({"i": np.arange(start, start + n), "x": r.normal(size=(n, 2))})
        start += n
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("batch_size", [1, 7, 64, None])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batcher_cuts_any_blocks_into_exact_batches(seed: int, batch_size, drop_last) -> None:
    blocks = random_blocks(12, seed)
    total = sum(B.num_rows(b) for b in blocks)
    batches = list(B.Batcher(batch_size, drop_last).batches(blocks))
    got = np.concatenate([b["i"] for b in batches]) if batches else np.array([])
    if batch_size is None:
        assert (got == np.arange(total)).all()
        return
    sizes = [B.num_rows(b) for b in batches]
    full = total // batch_size
    assert sizes[:full] == [batch_size] * full
    if drop_last or total % batch_size == 0:
        assert len(sizes) == full and (got == np.arange(full * batch_size)).all()
    else:
        assert sizes[-1] == total % batch_size and (got == np.arange(total)).all()
    assert all(np.array_equal(b["x"][:, 0], np.concatenate(
        [blk["x"][:, 0] for blk in blocks])[b["i"]]) for b in batches)  # rows stay whole


@pytest.mark.parametrize("seed", range(3))
def test_local_shuffle_buffer_permutes_every_row_once(seed: int) -> None:
    blocks = random_blocks(15, seed)
    total = sum(B.num_rows(b) for b in blocks)
    out = list(B.Batcher(16, shuffle_buffer_size=50, shuffle_seed=seed).batches(blocks))
    got = np.concatenate([b["i"] for b in out])
    assert sorted(got) == list(range(total)) and (got != np.arange(total)).any()
    assert all(B.num_rows(b) == 16 for b in out[:-1])
    again = np.concatenate([b["i"] for b in B.Batcher(16, shuffle_buffer_size=50,
                                                      shuffle_seed=seed).batches(blocks)])
    assert (again == got).all()


def test_batches_round_trip_through_every_format() -> None:
    pytest.importorskip("pyarrow")
    block = {"a": rng.integers(0, 9, 20), "t": rng.normal(size=(20, 3, 2)),
             "s": np.array([f"w{i}" for i in range(20)], dtype=object)}
    for fmt in ("numpy", "pandas", "pyarrow"):
        back = B.from_batch(B.to_batch(block, fmt))
        assert list(back) == ["a", "t", "s"], fmt
        assert (back["a"] == block["a"]).all() and np.allclose(back["t"], block["t"]), fmt
        assert list(back["s"]) == list(block["s"]), fmt
    with pytest.raises(ValueError, match="batch_format"):
        B.to_batch(block, "arrow")
    with pytest.raises(TypeError, match="dict of arrays"):
        B.from_batch([1, 2])
    with pytest.raises(ValueError, match="equal lengths"):
        B.from_batch({"a": [1, 2], "b": [1]})


def test_rows_and_items_become_columns() -> None:
    assert B.from_rows([1, 2, 3])["item"].tolist() == [1, 2, 3]
    blk = B.from_rows([{"a": 1, "v": np.ones(3)}, {"a": 2, "v": np.zeros(3)}])
    assert blk["v"].shape == (2, 3)
    assert [r["a"] for r in B.iter_rows(blk)] == [1, 2]
    ragged = B.from_rows([{"v": np.ones(2)}, {"v": np.ones(3)}])
    assert ragged["v"].dtype == object
    parts = B.split_rows({"a": np.arange(10)}, 3)
    assert [len(p["a"]) for p in parts] == [3, 3, 4]
    assert (B.concat(parts)["a"] == np.arange(10)).all()


@pytest.mark.parametrize("seed", range(4))
def test_sort_indices_match_pandas_stable_sort(seed: int) -> None:
    r = np.random.default_rng(seed)
    df = pd.DataFrame({"a": r.integers(0, 5, 300), "b": r.normal(size=300).round(1),
                       "s": r.choice(["x", "y", "z"], 300).astype(object)})
    block = {k: df[k].to_numpy() for k in df}
    for keys, desc in ((["a"], False), (["a", "b"], [False, True]), (["s", "a"], [True, False]),
                       (["b"], True)):
        asc = [not d for d in desc] if isinstance(desc, list) else not desc
        ref = df.sort_values(keys, ascending=asc, kind="stable").index.to_numpy()
        got = B.sort_indices(block, keys, desc)
        assert (got == ref).all(), (keys, desc)


@pytest.mark.parametrize("descending", [False, True])
def test_range_partition_splits_by_quantile_bounds(descending: bool) -> None:
    col = rng.integers(0, 100, 1000)
    bounds = B.quantile_bounds(col, 4)
    parts = B.range_partition({"k": col}, "k", bounds, descending)
    assert sum(len(p["k"]) for p in parts) == 1000
    order = parts[::-1] if descending else parts
    for lo, hi in itertools.pairwise(order):
        if len(lo["k"]) and len(hi["k"]):
            assert lo["k"].max() < hi["k"].min()
    assert all(len(p["k"]) > 100 for p in parts)  # quantiles: parts of similar size


@pytest.mark.parametrize("seed", range(3))
def test_group_aggregations_match_pandas(seed: int) -> None:
    r = np.random.default_rng(seed)
    df = pd.DataFrame({"k": r.integers(0, 9, 500), "j": r.integers(0, 2, 500),
                       "x": r.normal(size=500)}).sort_values(["k", "j"], kind="stable")
    block = {c: df[c].to_numpy() for c in df}
    aggs = [agg.Count(), agg.Sum("x"), agg.Min("x"), agg.Max("x"), agg.Mean("x"), agg.Std("x"),
            agg.Std("x", ddof=0, alias_name="pstd")]
    out = agg.aggregate_groups(block, ["k", "j"], aggs)
    g = df.groupby(["k", "j"])["x"]
    assert (out["count()"] == g.size().to_numpy()).all()
    for name, ref in (("sum(x)", g.sum()), ("min(x)", g.min()), ("max(x)", g.max()),
                      ("mean(x)", g.mean()), ("std(x)", g.std()), ("pstd", g.std(ddof=0))):
        assert np.allclose(out[name], ref.to_numpy(), equal_nan=True), name


def test_global_partials_merge_to_numpy_values() -> None:
    x = rng.normal(size=1000)
    parts = np.array_split(x, 7)
    for cls, ref in ((agg.Sum, x.sum()), (agg.Mean, x.mean()), (agg.Std, x.std(ddof=1)),
                     (agg.Min, x.min()), (agg.Max, x.max()), (agg.Count, 1000)):
        a = cls("x")
        acc = None
        for p in parts:
            part = a.accumulate(None, {"x": p})
            acc = part if acc is None else a.merge(acc, part)
        assert np.isclose(a.finalize(acc), ref), cls.__name__
    nan = agg.Mean("x").accumulate(None, {"x": np.array([1.0, np.nan, 3.0])})
    assert agg.Mean("x").finalize(nan) == 2.0  # nulls ignored


def test_custom_aggregate_per_group_by_rows() -> None:
    fn = agg.AggregateFn(init=lambda k: 0, accumulate_row=lambda a, row: a + row["v"] ** 2,
                         merge=lambda a, b: a + b, name="ss")
    block = {"k": np.array([0, 0, 1]), "v": np.array([1, 2, 3])}
    assert agg.aggregate_groups(block, ["k"], [fn])["ss"].tolist() == [5, 9]
    with pytest.raises(ValueError, match="exactly one"):
        agg.AggregateFn(init=lambda k: 0, merge=lambda a, b: a)


@pytest.mark.parametrize("seed", range(5))
def test_row_pieces_cover_each_output_range_exactly(seed: int) -> None:
    r = np.random.default_rng(seed)
    rows = r.integers(0, 20, 8).tolist()
    total = sum(rows)
    cuts = sorted({0, total, *r.integers(0, total + 1, 4).tolist()})
    flat = np.arange(total)
    starts = np.concatenate([[0], np.cumsum(rows)])
    for (a, b), pieces in zip(itertools.pairwise(cuts), row_pieces(rows, cuts)):
        got = np.concatenate([flat[starts[i] + s: starts[i] + e] for i, s, e in pieces]
                             or [np.array([], int)])
        assert (got == flat[a:b]).all()


@pytest.mark.parametrize("n, chunk, width", [(1, 5, 1), (2, 16, 1), (3, 7, 1), (2, 16, 4096),
                                             (3, 7, 9400)])
def test_dealt_chunks_go_round_robin_whatever_the_block_sizes(n: int, chunk: int,
                                                              width: int) -> None:
    r = np.random.default_rng(n)
    rows = r.integers(0, 40, 20).tolist()
    start, got = 0, [[] for _ in range(n)]
    for k in rows:  # width 4096+: chunks of >= 256 KiB, handed on as views of the block
        block = {"i": np.arange(start, start + k), "w": np.zeros((k, width))}
        parts = _deal(block, start, n, chunk)
        parts = [parts] if n == 1 else parts
        if width > 1 and k:
            assert all(isinstance(p, list) for p in parts)
            assert all(np.shares_memory(v["w"], block["w"]) for p in parts for v in p)
        parts = [B.concat(p) if isinstance(p, list) else p for p in parts]
        assert [B.num_rows(p) if p else 0 for p in parts] == part_sizes(start, k, n, chunk)
        for c, p in enumerate(parts):
            got[c].extend(p["i"].tolist() if p else [])
        start += k
    for c in range(n):  # consumer c's batch j is chunk j*n + c of the stream
        expect = [i for i in range(start) if (i // chunk) % n == c]
        assert got[c] == expect


def test_row_ranges_are_aligned_and_cover_everything() -> None:
    for total, n, align in ((1000, 7, 1), (1000, 7, 100), (10, 20, 1), (1234, 5, 64)):
        rr = S.row_ranges(total, n, align)
        assert rr[0][0] == 0 and rr[-1][1] == total
        assert all(a == pb for (a, _), (_, pb) in zip(rr[1:], rr))
        assert all(a % align == 0 for a, _ in rr) and len(rr) <= n
    assert S.row_ranges(0, 4) == []
    assert S.blocks_for(10 * 2**30, 10**6, None, 4) == 1280  # ~8 MiB blocks
    assert S.blocks_for(1000, 10, None, 4) == 4 and S.blocks_for(1000, 3, None, 4) == 3
    with pytest.raises(ValueError, match="override_num_blocks"):
        S.blocks_for(1, 1, 0, 1)


def test_paths_expand_files_directories_and_globs(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.npy", "d/sub/b.npy", "d/c.txt", "d/.hidden.npy"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(p).name for p in S.expand_paths(str(tmp_path / "d"), (".npy",))] == [
        "a.npy", "b.npy"]
    assert len(S.expand_paths(str(tmp_path / "d" / "*.txt"))) == 1
    with pytest.raises(FileNotFoundError, match="nope"):
        S.expand_paths(str(tmp_path / "nope.npy"))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        S.expand_paths(str(tmp_path / "*.zarr"))


@pytest.mark.skipif(importlib.util.find_spec("h5py") is None, reason="needs h5py")
def test_hdf5_plan_reads_hyperslabs_at_chunk_boundaries(tmp_path: Path) -> None:
    import h5py

    x = rng.normal(size=(1000, 3))
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(64, 3))
        f.create_dataset("y", data=np.arange(1000))
        f.create_dataset("short", data=np.arange(10))
    src = S.hdf5_source(str(tmp_path / "f.h5"), ["x", "y"], None, lambda: 4)
    tasks = src.plan(5)
    assert all(t.args[3] % 64 == 0 for t in tasks) and src.num_rows() == 1000
    got = B.concat([t() for t in tasks])
    assert np.array_equal(got["x"], x) and np.array_equal(got["y"], np.arange(1000))
    assert "rows 0-" in tasks[0].desc and "f.h5" in tasks[0].desc
    with h5py.File(tmp_path / "c.h5", "w") as f:  # contiguous: read as a mapped view
        f.create_dataset("be", data=x.astype(">f8"))
    [only] = S.hdf5_source(str(tmp_path / "c.h5"), "be", 1, lambda: 1).plan(1)
    got = only()["be"]
    assert np.array_equal(got, x) and got.dtype == np.dtype(">f8") and not got.flags.owndata
    with pytest.raises(ValueError, match="equal lengths"):
        S.hdf5_source(str(tmp_path / "f.h5"), ["x", "short"], None, lambda: 4)
    with pytest.raises(KeyError, match="no dataset 'z'"):
        S.hdf5_source(str(tmp_path / "f.h5"), "z", None, lambda: 4)


@pytest.mark.skipif(importlib.util.find_spec("h5py") is None, reason="needs h5py")
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_hdf5_rows_are_mapped_from_the_file_where_chunks_hold_whole_rows(
        tmp_path: Path, seed: int, monkeypatch) -> None:
    import h5py

    with h5py.File(tmp_path / "small.h5", "w") as f:  # 1.5 KiB chunks: HDF5 reads them
        f.create_dataset("s", data=np.zeros((256, 2, 3), "f4"), chunks=(64, 2, 3))
    with h5py.File(tmp_path / "small.h5", "r") as f:
        assert S._mapped_rows(str(tmp_path / "small.h5"), f["s"], 0, 256) is None
    monkeypatch.setattr(S, "MIN_MAPPED_CHUNK_BYTES", 0)  # map them here
    r = np.random.default_rng(seed)
    x = r.normal(size=(1003, 2, 3)).astype(np.float32)
    layouts = {  # name: (create_dataset kwargs, write order, mapped)
        "ordered": ({"chunks": (64, 2, 3)}, "rows", True),
        "reversed": ({"chunks": (64, 2, 3)}, "reversed", True),  # chunks not in file order
        "big_endian": ({"chunks": (100, 2, 3), "dtype": ">f4"}, "rows", True),
        "column_chunks": ({"chunks": (64, 1, 3)}, "rows", False),  # rows split over chunks
        "gzip": ({"chunks": (64, 2, 3), "compression": "gzip"}, "rows", False),
        "shuffle": ({"chunks": (64, 2, 3), "shuffle": True}, "rows", False),
    }
    with h5py.File(tmp_path / "k.h5", "w") as f:
        for name, (kw, order, _) in layouts.items():
            ds = f.create_dataset(name, shape=x.shape, dtype=kw.pop("dtype", "f4"), **kw)
            starts = list(range(0, len(x), 64))
            for s in starts[::-1] if order == "reversed" else starts:
                ds[s:s + 64] = x[s:s + 64]
        part = f.create_dataset("partial", shape=x.shape, dtype="f4", chunks=(64, 2, 3))
        part[:128] = x[:128]  # the rest is never written: fill values
    with h5py.File(tmp_path / "k.h5", "r") as f:
        for name, (_, _, mapped) in layouts.items():
            for a, b in [(0, 1003), (0, 64), (63, 65), (960, 1003), (1000, 1003),
                         *sorted(tuple(sorted(r.integers(0, 1004, 2))) for _ in range(6))]:
                view = S._mapped_rows(str(tmp_path / "k.h5"), f[name], a, b)
                assert (view is not None) == (mapped and b > a), (name, a, b)
                if view is not None:
                    assert np.array_equal(view, x[a:b]) and view.dtype == f[name].dtype
        assert S._mapped_rows(str(tmp_path / "k.h5"), f["partial"], 0, 128) is not None
        assert S._mapped_rows(str(tmp_path / "k.h5"), f["partial"], 100, 200) is None
    names = [*layouts, "partial"]
    src = S.hdf5_source(str(tmp_path / "k.h5"), names, None, lambda: 3)
    got = B.concat([t() for t in src.plan(7)])
    for name in layouts:
        assert np.array_equal(got[name], x), name
    assert np.array_equal(got["partial"][:128], x[:128]) and not got["partial"][128:].any()


def test_numpy_plan_reads_row_ranges_of_memory_mapped_files(tmp_path: Path) -> None:
    a = rng.normal(size=(300, 2))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", a[:100])
    src = S.numpy_source(str(tmp_path), None, lambda: 8)
    tasks = src.plan(None)
    assert len(tasks) == 8 and src.num_rows() == 400
    assert np.array_equal(B.concat([t() for t in tasks])["data"], np.concatenate([a, a[:100]]))


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow")
def test_parquet_plan_groups_row_groups_and_rejects_schema_mismatch(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": np.arange(100), "b": rng.normal(size=100)})
    df.to_parquet(tmp_path / "x.parquet", row_group_size=10)
    src = S.parquet_source(str(tmp_path / "x.parquet"), None, 3, lambda: 2)
    tasks = src.plan(3)
    assert len(tasks) == 3 and sum(t.rows for t in tasks) == 100
    assert np.array_equal(B.concat([t() for t in tasks])["a"], np.arange(100))
    pd.DataFrame({"a": ["s"]}).to_parquet(tmp_path / "y.parquet")
    with pytest.raises(ValueError, match="different schemas"):
        S.parquet_source(str(tmp_path), None, None, lambda: 2)


def test_progress_prints_a_line_per_operator_only_when_asked(monkeypatch, capsys) -> None:
    from hpcray.data.executor import DatasetStats, _Progress

    stats = DatasetStats()
    read = stats.add("ReadHDF5->MapBatches(f)")
    read.tasks, read.rows, read.bytes, read.expected, read.start = 3, 300, 3 * 2**20, 8, 0.0
    stats.add("MapBatches(Model)")
    monkeypatch.setenv("HPCRAY_DATA_PROGRESS", "1")
    _Progress(stats).update(force=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "ReadHDF5->MapBatches(f): 3/8 blocks, 300 rows, 3.0 MiB" in lines[0]
    monkeypatch.setenv("HPCRAY_DATA_PROGRESS", "0")
    _Progress(stats).update(force=True)
    assert capsys.readouterr().err == ""  # not a terminal here
    assert "Operator 0: ReadHDF5->MapBatches(f): 3 tasks, 300 rows, 3.0 MiB" in stats.to_string()


def test_csv_files_with_different_columns_fail_at_creation(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "b.csv").write_text("x,z\n1,2\n")
    assert len(S.csv_source(str(tmp_path / "a.csv"), {}).plan(None)) == 1
    with pytest.raises(ValueError, match="b.csv has 'x,z'"):
        S.csv_source(str(tmp_path), {})


def _flaky(state: dict) -> dict:
    state["calls"] += 1
    if state["calls"] < 3:
        raise OSError("stale NFS handle")
    return {"a": np.arange(3)}


def test_transient_read_errors_are_retried_then_named() -> None:
    from hpcray.data.executor import UserCodeException, _read

    state = {"calls": 0}
    assert _read(S.PlannedRead(_flaky, (state,), "file f.h5 rows 0-3"), "ReadHDF5", 3)["a"].size == 3
    assert state["calls"] == 3
    state = {"calls": -10}
    with pytest.raises(UserCodeException, match="ReadHDF5 failed to read file f.h5 rows 0-3"):
        _read(S.PlannedRead(_flaky, (state,), "file f.h5 rows 0-3"), "ReadHDF5", 2)
    assert state["calls"] == -7  # 1 try + 2 retries


@pytest.mark.skipif(importlib.util.find_spec("zarr") is None, reason="needs zarr")
def test_zarr_plan_reads_chunk_aligned_blocks_of_arrays_and_groups(tmp_path: Path) -> None:
    import zarr

    a = rng.normal(size=(1000, 3))
    z = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=a.shape, chunks=(64, 3),
                  dtype="f8")
    z[:] = a
    src = S.zarr_source(str(tmp_path / "a.zarr"), None, None, lambda: 4)
    tasks = src.plan(5)
    assert all(t.args[3] % 64 == 0 for t in tasks) and src.num_rows() == 1000
    assert np.array_equal(B.concat([t() for t in tasks])["data"], a)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    x = g.create_array("x", shape=(500, 2), chunks=(100, 2), dtype="f8") \
        if hasattr(g, "create_array") else g.create_dataset("x", shape=(500, 2), chunks=(100, 2))
    x[:] = a[:500, :2]
    y = g.create_array("y", shape=(500,), chunks=(50,), dtype="i8") \
        if hasattr(g, "create_array") else g.create_dataset("y", shape=(500,), chunks=(50,))
    y[:] = np.arange(500)
    got = B.concat([t() for t in S.zarr_source(str(tmp_path / "g.zarr"), None, 3,
                                               lambda: 2).plan(3)])
    assert list(got) == ["x", "y"] and np.array_equal(got["x"], a[:500, :2])
    with pytest.raises(KeyError, match="no array 'z'"):
        S.zarr_source(str(tmp_path / "g.zarr"), ["z"], None, lambda: 2)
    with pytest.raises(FileNotFoundError, match="no such Zarr store"):
        S.zarr_source(str(tmp_path / "none.zarr"), None, None, lambda: 2)


def test_udf_retries_follow_retry_exceptions_and_max_retries() -> None:
    from hpcray.data.dataset import _retry_args
    from hpcray.data.executor import MapSpec, apply_chain, retriable

    assert retriable(ValueError(), (ValueError,), 0, 2) and not retriable(KeyError(), (
        ValueError,), 0, 2)
    assert retriable(KeyError(), True, 1, 2) and not retriable(KeyError(), True, 2, 2)
    assert retriable(KeyError(), True, 50, -1) and not retriable(KeyError(), False, 0, -1)
    assert _retry_args({"retry_exceptions": [OSError], "max_retries": 5}) == {
        "max_retries": 5, "retry_exceptions": (OSError,)}
    with pytest.raises(TypeError, match="list of exception classes"):
        _retry_args({"retry_exceptions": ["OSError"]})
    calls = []

    def flaky(block, _udf):
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("try again")
        return {"x": block["x"] + 1}

    spec = MapSpec("Flaky", flaky, max_retries=2, retry_exceptions=(ConnectionError,))
    assert apply_chain({"x": np.arange(3)}, [spec], [None], "rows 0-3")["x"].tolist() == [1, 2, 3]
    calls.clear()
    spec.max_retries = 1
    with pytest.raises(Exception, match=r"Flaky failed on rows 0-3 \(attempt 2\)"):
        apply_chain({"x": np.arange(3)}, [spec], [None], "rows 0-3")


def test_custom_datasource_plans_read_tasks_from_its_estimate() -> None:
    class Ones(S.Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return 40 * 2**20  # 5 blocks of the default 8 MiB

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None,
                           data_context=None) -> list:
            return [S.ReadTask(lambda k=k: [{"x": np.full(k + 1, k)}, {"x": np.zeros(1)}],
                               B.BlockMetadata(k + 2, 8 * (k + 2)), per_task_row_limit=k + 1)
                    for k in range(parallelism)]

    src = S.custom_source(Ones(), lambda: 2)
    tasks = src.plan(None)
    assert len(tasks) == 5 and src.name == "ReadOnes" and src.num_rows() == sum(range(2, 7))
    assert tasks[3]()["x"].tolist() == [3, 3, 3, 3]  # two blocks, cut at the row limit
    assert "read task 3 of Ones" in tasks[3].desc and len(src.plan(2)) == 2

    class Wrong(S.Datasource):
        def get_read_tasks(self, parallelism: int, **kw) -> list:
            return [list]  # not a ReadTask

    with pytest.raises(TypeError, match="must return hpcray.data.ReadTask"):
        S.custom_source(Wrong(), lambda: 2).plan(None)
    with pytest.raises(TypeError, match="Datasource subclass"):
        S.custom_source(object(), lambda: 2)


def test_actor_pools_grow_while_input_waits_and_let_idle_actors_go() -> None:
    from hpcray.data.dataset import ActorPoolStrategy, _compute_concurrency
    from hpcray.data.executor import PoolSizer

    p = PoolSizer(1, 3, idle_timeout=5.0)
    assert p.grow([2, 2], True) and not p.grow([2, 1], True) and not p.grow([2, 2], False)
    assert not p.grow([2, 2, 2], True)  # at max_size
    loads, since = {0: 0, 1: 0, 2: 1}, {0: 10.0, 1: 12.0, 2: 0.0}
    assert p.release(loads, since, True, True, 100.0) == []  # input waits: keep them all
    assert p.release(loads, since, False, False, 14.0) == []  # not idle long enough
    assert p.release(loads, since, False, False, 15.5) == [0]  # idle 5.5 s; 1 only 3.5 s
    assert p.release(loads, since, False, True, 12.0) == [0, 1]  # input exhausted: at once
    assert p.release({0: 0, 1: 0}, {0: 0.0, 1: 0.0}, False, True, 9.0) == [0]  # keeps min_size
    assert p.release({0: 2, 1: 1}, {0: 0.0, 1: 0.0}, False, True, 9.0) == []  # busy
    strategy = ActorPoolStrategy(min_size=2, max_size=4)
    assert _compute_concurrency(strategy, None, True) == (2, 4, 2)
    assert _compute_concurrency(ActorPoolStrategy(size=3), None, True) == (3, 3, 3)
    assert _compute_concurrency(None, (1, 2), True) == (1, 2)
    with pytest.raises(ValueError, match="runs a callable class"):
        _compute_concurrency(strategy, None, False)
    with pytest.raises(ValueError, match="min_size <= max_size"):
        ActorPoolStrategy(min_size=3, max_size=2)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed: the error is for its absence")
def test_to_tf_without_tensorflow_says_how_to_install_it() -> None:
    import hpcray.data as rd

    ds = rd.range(10)  # planning only: nothing runs before the import fails
    for call in (lambda: ds.to_tf("id", "id"), lambda: next(ds.iter_tf_batches()),
                 lambda: ds.iterator().to_tf(["id"], "id")):
        with pytest.raises(ImportError, match="pip install tensorflow"):
            call()
