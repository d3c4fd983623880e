"""Datasources: how a read becomes read tasks (one block each), planned on the driver.

Planning reads only metadata (shapes, row groups); every read task opens its file itself and
reads its own rows, so data never passes through the driver.
"""

from __future__ import annotations

import glob
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .block import Block, BlockMetadata, column, concat, from_batch, num_rows, slice_block
from .datasink import Datasink, TaskContext, WriteResult  # noqa: F401 - Ray's import path

# Reads cut data into blocks of about this size: small enough that tasks pipeline and stay in
# cache (measured on 2 ranks: 8 MiB blocks stream 2-4x faster than 64-128 MiB ones)
DEFAULT_READ_BLOCK_BYTES = 8 * 1024 * 1024


@dataclass
class PlannedRead:
    """Reads one block. ``rows``/``nbytes`` are estimates known before reading (or None)."""

    fn: Callable[..., Block]
    args: tuple
    desc: str
    rows: int | None = None
    nbytes: int | None = None

    def __call__(self) -> Block:
        return self.fn(*self.args)


@dataclass
class Source:
    """A source of read tasks; ``plan(n)`` makes about n of them (None: the default)."""

    name: str
    planner: Callable[[int | None], list[PlannedRead]]
    num_rows_fn: Callable[[], int | None] = field(default=lambda: None)
    tasks: list[PlannedRead] | None = None
    planned_with: int | None = None

    def plan(self, num_blocks: int | None) -> list[PlannedRead]:
        if self.tasks is None or self.planned_with != num_blocks:
            self.tasks = self.planner(num_blocks)
            self.planned_with = num_blocks
        return self.tasks

    def num_rows(self) -> int | None:
        return self.num_rows_fn()


def expand_paths(paths: str | list[str], extensions: tuple[str, ...] | None = None) -> list[str]:
    """Files named by paths: files, directories (searched recursively) and globs, sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        p = p.removeprefix("local://")
        if any(c in p for c in "*?["):
            found = sorted(glob.glob(p, recursive=True))
            if not found:
                raise FileNotFoundError(f"no file matches {p!r}")
            out.extend(f for f in found if os.path.isfile(f))
        elif os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(root, f) for f in files
                             if not f.startswith((".", "_")))
            found = sorted(found)
            if extensions:
                found = [f for f in found if f.lower().endswith(extensions)]
            out.extend(found)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {p!r}")
    if not out:
        raise FileNotFoundError(f"no files to read in {list(paths)}"
                                + (f" (looked for {', '.join(extensions)})" if extensions else ""))
    return out


def row_ranges(total: int, num_blocks: int, align: int = 1) -> list[tuple[int, int]]:
    """[start, stop) ranges covering total rows in num_blocks parts, cut at multiples of align."""
    if total == 0:
        return []
    num_blocks = max(1, min(num_blocks, total))
    units = math.ceil(total / align)
    num_blocks = min(num_blocks, units)
    cuts = [min(total, (units * i // num_blocks) * align) for i in range(num_blocks + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def blocks_for(nbytes: int, rows: int, num_blocks: int | None, min_blocks: int,
               target_bytes: int | None = None) -> int:
    """How many blocks to cut rows into: as asked, else enough for the target block size
    (DataContext.read_block_size) and at least min_blocks (so every worker has work)."""
    if target_bytes is None:
        from .context import DataContext

        target_bytes = DataContext.get_current().read_block_size
    if num_blocks is not None:
        if num_blocks < 1:
            raise ValueError(f"override_num_blocks must be >= 1, got {num_blocks}")
        return num_blocks
    return max(1, min(rows, max(min_blocks, math.ceil(nbytes / target_bytes))))


# ------------------------------------------------------------------------------ range / tensor

def _range_block(start: int, stop: int, shape: tuple | None) -> Block:
    ids = np.arange(start, stop, dtype=np.int64)
    if shape is None:
        return {"id": ids}
    data = np.broadcast_to(ids.reshape(-1, *([1] * len(shape))), (len(ids), *shape)).copy()
    return {"data": data}


def range_source(n: int, shape: tuple | None, min_blocks: Callable[[], int]) -> Source:
    item = 8 * (int(np.prod(shape)) if shape else 1)

    def planner(num_blocks):
        k = blocks_for(n * item, n, num_blocks, min_blocks())
        return [PlannedRead(_range_block, (a, b, shape), f"rows {a}-{b}", b - a, (b - a) * item)
                for a, b in row_ranges(n, k)]

    return Source("Range" if shape is None else "RangeTensor", planner, lambda: n)


# ------------------------------------------------------------------------------ numpy

def _read_npy(path: str, start: int, stop: int, column_name: str) -> Block:
    arr = np.load(path, mmap_mode="r")
    # a view of the mapped file: the map after the read makes the first copy (pages are read
    # as it touches them); a block sent on as is gets copied by its serialization
    return {column_name: arr[start:stop].view(np.ndarray)}


def _read_npz(path: str, _start: int, _stop: int, column_name: str) -> Block:
    with np.load(path) as z:
        names = list(z.files)
        if len(names) == 1:
            return {column_name: z[names[0]]}
        return {k: z[k] for k in names}


def numpy_source(paths, num_blocks: int | None, min_blocks: Callable[[], int]) -> Source:
    files = expand_paths(paths, (".npy", ".npz"))
    shapes = []
    for f in files:
        if f.endswith(".npz"):
            shapes.append(None)
        else:
            arr = np.load(f, mmap_mode="r")
            shapes.append((arr.shape, arr.dtype.itemsize))
    total = sum(s[0][0] for s in shapes if s) if all(shapes) else None

    def planner(nb):
        npy_bytes = sum(int(np.prod(s[0])) * s[1] for s in shapes if s)
        npy_rows = sum(s[0][0] for s in shapes if s)
        k = blocks_for(npy_bytes, max(1, npy_rows), nb, min_blocks())
        tasks = []
        for f, s in zip(files, shapes):
            if s is None:
                tasks.append(PlannedRead(_read_npz, (f, 0, 0, "data"), f"file {f}"))
                continue
            rows = s[0][0]
            per_row = int(np.prod(s[0][1:])) * s[1]
            share = max(1, round(k * rows / max(1, npy_rows)))
            for a, b in row_ranges(rows, share):
                tasks.append(PlannedRead(_read_npy, (f, a, b, "data"), f"file {f} rows {a}-{b}",
                                      b - a, (b - a) * per_row))
        return tasks

    return Source("ReadNumpy", planner, lambda: total)


# ------------------------------------------------------------------------------ HDF5

def _read_hdf5(path: str, names: list[str], columns: list[str], start: int, stop: int) -> Block:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name, col in zip(names, columns):
            ds = f[name]
            view = _mapped_rows(path, ds, start, stop)
            if view is not None:
                out[col] = view
                continue
            arr = np.empty((stop - start, *ds.shape[1:]), dtype=ds.dtype)
            if stop > start:
                ds.read_direct(arr, np.s_[start:stop])
            if arr.dtype.kind in "SO" and arr.ndim == 1:
                arr = np.array([v.decode() if isinstance(v, bytes) else v for v in arr],
                               dtype=object)
            out[col] = arr
    return out


# chunked datasets are mapped chunk by chunk only when chunks are at least this big (a lookup
# and a map per chunk cost more than HDF5's own read of small ones)
MIN_MAPPED_CHUNK_BYTES = 64 * 1024


def _mapped_rows(path: str, ds, start: int, stop: int) -> np.ndarray | None:
    """Rows of an unfiltered numeric dataset straight from the memory-mapped file (as
    read_numpy: no copy until the map after the read touches them), else None (read it with
    HDF5). A contiguous dataset is one view; a chunked one whose chunks hold whole rows maps
    each run of chunks stored one after another (h5py writes row-ordered chunks so), and joins
    the runs with one copy."""
    if ds.dtype.kind not in "biuf" or ds.external or stop <= start \
            or ds.id.get_create_plist().get_nfilters():
        return None
    row = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    if ds.chunks is None:
        offset = ds.id.get_offset()
        return None if offset is None else _map(path, ds, offset + start * row, stop - start)
    rows_per_chunk = ds.chunks[0]
    chunk_bytes = rows_per_chunk * row
    if tuple(ds.chunks[1:]) != tuple(ds.shape[1:]) or chunk_bytes < MIN_MAPPED_CHUNK_BYTES \
            or not hasattr(ds.id, "get_chunk_info_by_coord"):
        return None  # chunks split rows (only HDF5 can gather them), or are too small to map
    runs: list[list[int]] = []  # [first row, stop row, file offset of the first row]
    first = start // rows_per_chunk * rows_per_chunk
    zeros = (0,) * (ds.ndim - 1)
    for c0 in range(first, stop, rows_per_chunk):
        info = ds.id.get_chunk_info_by_coord((c0, *zeros))
        if info.byte_offset is None or info.size != chunk_bytes:
            return None  # not written yet (fill values), or stored differently
        a, b = max(start, c0), min(stop, c0 + rows_per_chunk)
        offset = info.byte_offset + (a - c0) * row
        if runs and runs[-1][1] == a and runs[-1][2] + (a - runs[-1][0]) * row == offset:
            runs[-1][1] = b
        else:
            runs.append([a, b, offset])
    views = [_map(path, ds, off, b - a) for a, b, off in runs]
    return views[0] if len(views) == 1 else np.concatenate(views)


def _map(path: str, ds, offset: int, rows: int) -> np.ndarray:
    mm = np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=(rows, *ds.shape[1:]))
    return mm.view(np.ndarray)


def hdf5_source(paths, datasets: str | list[str] | None, num_blocks: int | None,
                min_blocks: Callable[[], int]) -> Source:
    import h5py

    files = expand_paths(paths, (".h5", ".hdf5", ".he5", ".nc"))
    plans = []
    for f in files:
        with h5py.File(f, "r") as h:
            names = datasets
            if names is None:
                names = [n for n in _list_datasets(h) if h[n].ndim >= 1]
                if not names:
                    raise ValueError(f"{f} has no datasets to read")
            elif isinstance(names, str):
                names = [names]
            lengths, chunk, row_bytes = {}, 1, 0
            for n in names:
                if n not in h:
                    raise KeyError(f"{f} has no dataset {n!r}; it has {_list_datasets(h)}")
                ds = h[n]
                if ds.ndim == 0:
                    raise ValueError(f"dataset {n!r} in {f} is a scalar; read_hdf5 reads arrays "
                                     "whose first axis is rows")
                lengths[n] = ds.shape[0]
                if ds.chunks:
                    chunk = max(chunk, ds.chunks[0])
                row_bytes += int(np.prod(ds.shape[1:])) * ds.dtype.itemsize
            if len(set(lengths.values())) > 1:
                raise ValueError(f"the datasets read together from {f} must have equal lengths "
                                 f"(the rows), got {lengths}")
            plans.append((f, list(names), next(iter(lengths.values())), chunk, row_bytes))
    columns = [n.strip("/") for n in plans[0][1]]
    return _chunked_rows("ReadHDF5", plans, columns, _read_hdf5, "file", False, min_blocks)


def _chunked_rows(name: str, plans: list, columns: list, read: Callable, what: str,
                  strict_chunks: bool, min_blocks: Callable[[], int]) -> Source:
    """Read tasks over row ranges of chunked arrays: plans are (source, names, rows, chunk,
    bytes per row); each source gets blocks in proportion to its rows, cut at chunk
    boundaries (with strict_chunks=False, only where a block holds a chunk or more)."""
    total = sum(p[2] for p in plans)

    def planner(nb):
        k = blocks_for(sum(p[2] * p[4] for p in plans), max(1, total), nb, min_blocks())
        tasks = []
        for source, names, rows, chunk, row_bytes in plans:
            share = max(1, round(k * rows / max(1, total)))
            align = chunk if strict_chunks or rows // max(1, share) >= chunk else 1
            for a, b in row_ranges(rows, share, align):
                tasks.append(PlannedRead(read, (source, names, columns, a, b),
                                      f"{what} {source} rows {a}-{b}", b - a,
                                      (b - a) * row_bytes))
        return tasks

    return Source(name, planner, lambda: total)


def _list_datasets(h) -> list[str]:
    import h5py

    names: list[str] = []
    h.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


# ------------------------------------------------------------------------------ Zarr

def _read_zarr(store: str, names: list[str] | None, columns: list[str], start: int,
               stop: int) -> Block:
    import zarr

    root = zarr.open(store, mode="r")
    arrays = [root] if names is None else [root[n] for n in names]
    return {c: np.asarray(a[start:stop]) for c, a in zip(columns, arrays)}


def zarr_source(paths, arrays: str | list[str] | None, num_blocks: int | None,
                min_blocks: Callable[[], int]) -> Source:
    """Zarr stores (directories): an array (column "data"), or arrays of a group as columns;
    blocks are cut at chunk boundaries, and each read task opens the store itself."""
    import zarr

    stores = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    plans = []
    for store in stores:
        store = os.fspath(store).removeprefix("local://")
        if not os.path.exists(store):
            raise FileNotFoundError(f"no such Zarr store: {store!r}")
        root = zarr.open(store, mode="r")
        if isinstance(root, zarr.Array):
            names, arrs = None, [root]
        else:
            names = [arrays] if isinstance(arrays, str) else list(arrays or sorted(
                k for k, v in root.arrays() if v.ndim >= 1))
            missing = [n for n in names if n not in root]
            if missing:
                raise KeyError(f"Zarr store {store} has no array {missing[0]!r}; it has "
                               f"{sorted(k for k, _ in root.arrays())}")
            arrs = [root[n] for n in names]
        lengths = {getattr(a, "path", "data") or "data": a.shape[0] for a in arrs}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the arrays read together from {store} must have equal lengths "
                             f"(the rows), got {lengths}")
        row_bytes = sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in arrs)
        chunk = max(a.chunks[0] for a in arrs)
        plans.append((store, names, arrs[0].shape[0], chunk, row_bytes))
    columns = ["data"] if plans[0][1] is None else [n.strip("/") for n in plans[0][1]]
    return _chunked_rows("ReadZarr", plans, columns, _read_zarr, "Zarr store", True,
                         min_blocks)


# ------------------------------------------------------------------------------ arrow formats

def _read_parquet(path: str, row_groups: list[int] | None, columns: list[str] | None) -> Block:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    table = f.read_row_groups(row_groups, columns=columns) if row_groups is not None \
        else f.read(columns=columns)
    return from_batch(table)


def parquet_source(paths, columns: list[str] | None, num_blocks: int | None,
                   min_blocks: Callable[[], int]) -> Source:
    import pyarrow.parquet as pq

    files = expand_paths(paths, (".parquet", ".pq"))
    metas, first = [], None
    for f in files:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        if first is None:
            first = (f, schema)
        elif not schema.equals(first[1]):
            raise ValueError(f"the parquet files have different schemas: {first[0]} has "
                             f"{first[1]} but {f} has {schema}; read them separately and union")
        md = pf.metadata
        metas.append((f, [(md.row_group(i).num_rows, md.row_group(i).total_byte_size)
                          for i in range(md.num_row_groups)]))
    total = sum(r for _, groups in metas for r, _ in groups)

    def planner(nb):
        nbytes = sum(b for _, groups in metas for _, b in groups)
        k = blocks_for(nbytes, max(1, len(metas)), nb, min_blocks())
        tasks = []
        groups_total = sum(len(g) for _, g in metas)
        per_task = max(1, math.ceil(groups_total / k))
        for f, groups in metas:
            for i in range(0, max(1, len(groups)), per_task):
                sel = list(range(i, min(i + per_task, len(groups))))
                rows = sum(groups[j][0] for j in sel)
                tasks.append(PlannedRead(_read_parquet, (f, sel, columns),
                                      f"file {f} row groups {sel[0] if sel else 0}-"
                                      f"{sel[-1] if sel else 0}", rows,
                                      sum(groups[j][1] for j in sel)))
        return tasks

    return Source("ReadParquet", planner, lambda: total)


def _read_csv(path: str, options: dict) -> Block:
    import pyarrow.csv as pcsv

    return from_batch(pcsv.read_csv(path, **options))


def _read_json(path: str, options: dict) -> Block:
    import pyarrow as pa
    import pyarrow.json as pjson

    try:
        return from_batch(pjson.read_json(path, **options))
    except pa.ArrowInvalid:  # a JSON array, not JSON lines
        import json

        with open(path) as fh:
            data = json.load(fh)
        if isinstance(data, dict):
            data = [data]
        from .block import from_rows

        return from_rows(data)


def _read_text(path: str, encoding: str, drop_empty: bool) -> Block:
    with open(path, encoding=encoding) as fh:
        lines = fh.read().splitlines()
    if drop_empty:
        lines = [ln for ln in lines if ln.strip()]
    return {"text": np.array(lines, dtype=object)}


def _read_binary(path: str, include_paths: bool) -> Block:
    with open(path, "rb") as fh:
        data = fh.read()
    out = {"bytes": np.array([data], dtype=object)}
    if include_paths:
        out["path"] = np.array([path], dtype=object)
    return out


def _read_image(path: str, size: tuple | None, mode: str | None, include_paths: bool) -> Block:
    from PIL import Image

    with Image.open(path) as img:
        if mode is not None:
            img = img.convert(mode)
        if size is not None:
            img = img.resize((size[1], size[0]))
        arr = np.asarray(img)
    out = {"image": column([arr])}
    if include_paths:
        out["path"] = np.array([path], dtype=object)
    return out


def file_source(name: str, paths, extensions: tuple[str, ...] | None,
                reader: Callable[..., Block], args: tuple) -> Source:
    """One read task per file."""
    files = expand_paths(paths, extensions)

    def planner(nb):
        return [PlannedRead(reader, (f, *args), f"file {f}") for f in files]

    return Source(name, planner)


def csv_source(paths, options: dict) -> Source:
    src = file_source("ReadCSV", paths, (".csv",), _read_csv, (options,))
    if not options:  # files with different header lines fail now, naming them
        first = None
        for f in src.plan(None):
            with open(f.args[0], encoding="utf-8", errors="replace") as fh:
                header = fh.readline().strip()
            if first is None:
                first = (f.args[0], header)
            elif header != first[1]:
                raise ValueError(f"the CSV files have different columns: {first[0]} has "
                                 f"{first[1]!r} but {f.args[0]} has {header!r}; read them "
                                 "separately and union")
    return src


def json_source(paths, options: dict) -> Source:
    return file_source("ReadJSON", paths, (".json", ".jsonl"), _read_json, (options,))


def text_source(paths, encoding: str, drop_empty: bool) -> Source:
    return file_source("ReadText", paths, None, _read_text, (encoding, drop_empty))


def binary_source(paths, include_paths: bool) -> Source:
    return file_source("ReadBinary", paths, None, _read_binary, (include_paths,))


def image_source(paths, size, mode, include_paths: bool) -> Source:
    exts = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
    return file_source("ReadImage", paths, exts, _read_image, (size, mode, include_paths))


# ------------------------------------------------------------------------------ custom sources

class ReadTask:
    """A read of a custom datasource (Ray Data's ``ReadTask``): ``read_fn()`` returns an
    iterable of blocks (pyarrow Tables, pandas DataFrames or dicts of arrays); ``metadata``
    (a ``BlockMetadata``) estimates their rows and bytes before the read."""

    def __init__(self, read_fn: Callable[[], Any], metadata: BlockMetadata,
                 schema: Any = None, per_task_row_limit: int | None = None):
        self._read_fn = read_fn
        self._metadata = metadata
        self._schema = schema
        self._per_task_row_limit = per_task_row_limit

    @property
    def read_fn(self) -> Callable[[], Any]:
        return self._read_fn

    @property
    def metadata(self) -> BlockMetadata:
        return self._metadata

    @property
    def schema(self) -> Any:
        return self._schema

    @property
    def per_task_row_limit(self) -> int | None:
        return self._per_task_row_limit

    def __call__(self) -> Any:
        return self._read_fn()


class Datasource:
    """Base class of a custom datasource (Ray Data's ``Datasource``): implement
    ``get_read_tasks(parallelism)`` and ``estimate_inmemory_data_size()``, then read it with
    ``hpcray.data.read_datasource(MySource(...))``. The read tasks run on the job's ranks."""

    def get_name(self) -> str:
        """The operator's name in stats and errors: the class name less "Datasource"."""
        return type(self).__name__.removesuffix("Datasource") or "Datasource"

    def estimate_inmemory_data_size(self) -> int | None:
        """Bytes of all the data once read, or None if unknown."""
        raise NotImplementedError

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        """About ``parallelism`` ReadTasks that together read everything."""
        raise NotImplementedError

    @property
    def supports_distributed_reads(self) -> bool:
        return True


def _run_read_task(task: ReadTask) -> Block:
    blocks = [from_batch(b) for b in task()]
    block = concat(blocks)
    limit = task.per_task_row_limit
    if limit is not None and block and num_rows(block) > limit:
        block = slice_block(block, 0, limit)
    return block


def custom_source(source: Datasource, min_blocks: Callable[[], int]) -> Source:
    """Read tasks from a user's Datasource; None blocks: from its size estimate."""
    if not isinstance(source, Datasource):
        raise TypeError(f"read_datasource takes a hpcray.data.Datasource subclass (with "
                        f"get_read_tasks and estimate_inmemory_data_size), got "
                        f"{type(source).__name__}")
    name = source.get_name()

    def planner(nb: int | None) -> list[PlannedRead]:
        if nb is None:
            try:
                size = source.estimate_inmemory_data_size()
            except NotImplementedError:
                size = None
            nb = blocks_for(size or 0, 2**62, None, min_blocks())
        tasks = source.get_read_tasks(nb)
        for t in tasks:
            if not isinstance(t, ReadTask):
                raise TypeError(f"{type(source).__name__}.get_read_tasks must return "
                                f"hpcray.data.ReadTask objects, got {type(t).__name__}")
        return [PlannedRead(_run_read_task, (t,), f"read task {i} of {name}",
                            t.metadata.num_rows, t.metadata.size_bytes)
                for i, t in enumerate(tasks)]

    src = Source(f"Read{name}", planner)

    def rows() -> int | None:
        counts = [t.rows for t in src.plan(src.planned_with)]
        return None if any(c is None for c in counts) else sum(counts)

    src.num_rows_fn = rows
    return src
