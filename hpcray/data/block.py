"""Blocks: a dict of equal-length numpy columns, and conversions to and from batches.

Everything here is pure logic (no runtime), so it is tested in-process.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

Block = dict  # str -> np.ndarray, all of one length


@dataclass
class BlockMetadata:
    """What a custom datasource's ReadTask will read, known before it reads (Ray Data's
    ``BlockMetadata``; ``schema`` is accepted as older Ray versions had it)."""

    num_rows: int | None
    size_bytes: int | None
    exec_stats: Any = None
    task_exec_stats: Any = None
    input_files: list[str] | tuple[str, ...] | None = None
    schema: Any = None

BATCH_FORMATS = ("default", "numpy", "pandas", "pyarrow", "cupy")


def num_rows(block: Block) -> int:
    for col in block.values():
        return len(col)
    return 0


def size_bytes(block: Block) -> int:
    total = 0
    for col in block.values():
        if col.dtype == object:
            total += 8 * len(col) + sum(_obj_size(v) for v in col[:64]) * max(1, len(col) // 64)
        else:
            total += col.nbytes
    return total


def _obj_size(v: Any) -> int:
    if isinstance(v, (str, bytes)):
        return len(v)
    if isinstance(v, np.ndarray):
        return v.nbytes
    return 16


def schema_of(block: Block) -> dict[str, str]:
    out = {}
    for k, v in block.items():
        out[k] = str(v.dtype) if v.ndim == 1 else f"{v.dtype}{tuple(v.shape[1:])}"
    return out


def column(values: Any) -> np.ndarray:
    """One column as an array: lists of equal-shape arrays stack; ragged ones stay objects;
    a CuPy array comes to the host (blocks live in host memory)."""
    if isinstance(values, np.ndarray):
        return values
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(values, cupy.ndarray):
        return cupy.asnumpy(values)
    if _is_arrow(values):
        return _arrow_column(values)
    if hasattr(values, "to_numpy") and not isinstance(values, (list, tuple)):
        values = values.to_numpy()
        if values.dtype != object:
            return values
        values = list(values)
    values = list(values)
    if values and all(isinstance(v, np.ndarray) for v in values):
        shapes = {v.shape for v in values}
        if len(shapes) == 1:
            return np.stack(values)
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    if values and any(isinstance(v, (list, tuple, dict)) or v is None for v in values):
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        if not any(isinstance(v, dict) or v is None for v in values):
            try:  # equal-length lists become a tensor column
                return np.array(values)
            except ValueError:
                pass
        return out
    arr = np.asarray(values)
    if arr.dtype.kind == "U":
        arr = arr.astype(object)
    return arr


def _is_arrow(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("pyarrow")


def _arrow_column(col) -> np.ndarray:
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        if isinstance(col.type, pa.FixedShapeTensorType):
            return np.concatenate([c.to_numpy_ndarray() for c in col.chunks]) if col.num_chunks \
                else np.empty((0, *col.type.shape))
        col = col.combine_chunks()
    if isinstance(col.type, pa.FixedShapeTensorType):
        return col.to_numpy_ndarray()
    if pa.types.is_fixed_size_list(col.type) and col.null_count == 0:
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), -1)
    arr = col.to_numpy(zero_copy_only=False)
    if arr.dtype == object:
        return column(list(arr)) if len(arr) and isinstance(arr[0], np.ndarray) else arr
    return arr


def from_batch(batch: Any) -> Block:
    """What a UDF returned (dict of arrays/lists, pandas DataFrame, pyarrow Table) as a block."""
    if isinstance(batch, dict):
        block = {str(k): column(v) for k, v in batch.items()}
    elif _is_arrow(batch) and hasattr(batch, "column_names"):
        block = {name: _arrow_column(batch.column(name)) for name in batch.column_names}
    elif hasattr(batch, "columns") and hasattr(batch, "iloc"):  # pandas
        block = {str(k): column(batch[k]) for k in batch.columns}
    else:
        raise TypeError(f"a batch must be a dict of arrays, a pandas DataFrame or a pyarrow "
                        f"Table; the function returned a {type(batch).__name__}")
    lengths = {k: len(v) for k, v in block.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the columns of a batch must have equal lengths, got {lengths}")
    return block


def to_batch(block: Block, batch_format: str | None) -> Any:
    """The block as a user-facing batch of the given format."""
    fmt = batch_format or "default"
    if fmt in ("default", "numpy"):
        return dict(block)
    if fmt == "pandas":
        import pandas as pd

        return pd.DataFrame({k: (list(v) if v.ndim > 1 else v) for k, v in block.items()})
    if fmt == "pyarrow":
        return to_arrow(block)
    if fmt == "cupy":
        return to_cupy(block)
    raise ValueError(f"batch_format must be one of {BATCH_FORMATS}, got {batch_format!r}")


def import_cupy(what: str) -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(f"{what} needs CuPy, which is not installed: pip install "
                          f"cupy-cuda12x (or the CuPy build for your CUDA version)") from exc
    return cupy


def to_cupy(block: Block, device: int | None = None) -> dict:
    """The block's columns as CuPy arrays on the GPU (device: its index; None: the current
    one). Strings and other objects cannot go to a GPU: such a column is an error."""
    cupy = import_cupy("CuPy batches (batch_format='cupy', device='cuda')")
    bad = [k for k, v in block.items() if v.dtype == object]
    if bad:
        raise TypeError(f"CuPy batches hold numbers, but column(s) {bad} hold objects "
                        f"(strings?): drop them first (ds.drop_columns({bad}))")
    with cupy.cuda.Device(device) if device is not None else contextlib.nullcontext():
        return {k: cupy.asarray(v) for k, v in block.items()}


def to_arrow(block: Block):
    import pyarrow as pa

    cols = {}
    for k, v in block.items():
        if v.ndim > 1:
            cols[k] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(v))
        elif v.dtype == object:
            cols[k] = pa.array(list(v))
        else:
            cols[k] = pa.array(v)
    return pa.table(cols)


def from_rows(rows: list) -> Block:
    """Rows (dicts, or anything else as {"item": x}) as a block."""
    if not rows:
        return {}
    if all(isinstance(r, dict) for r in rows):
        keys = list(rows[0])
        for r in rows:
            if list(r) != keys and set(r) != set(keys):
                raise ValueError(f"rows have different columns: {sorted(keys)} and {sorted(r)}")
        return {k: column([r[k] for r in rows]) for k in keys}
    return {"item": column(rows)}


def iter_rows(block: Block) -> Iterator[dict]:
    """Rows as dicts; numbers of 1-d columns as Python scalars (as Ray's rows)."""
    keys = list(block)
    cols = [block[k].tolist() if block[k].ndim == 1 and block[k].dtype != object else block[k]
            for k in keys]
    for i in range(num_rows(block)):
        yield {k: c[i] for k, c in zip(keys, cols)}


def slice_block(block: Block, start: int, stop: int) -> Block:
    return {k: v[start:stop] for k, v in block.items()}


def take_rows(block: Block, index: np.ndarray) -> Block:
    return {k: v[index] for k, v in block.items()}


def concat(blocks: Iterable[Block]) -> Block:
    blocks = [b for b in blocks if b and num_rows(b) > 0] or [b for b in blocks if b][:1]
    if not blocks:
        return {}
    if len(blocks) == 1:
        return blocks[0]
    keys = list(blocks[0])
    for b in blocks[1:]:
        if set(b) != set(keys):
            raise ValueError(f"cannot combine blocks with different columns: {sorted(keys)} and "
                             f"{sorted(b)}")
    return {k: _concat_col([b[k] for b in blocks]) for k in keys}


def _concat_col(cols: list[np.ndarray]) -> np.ndarray:
    if any(c.dtype == object for c in cols) and not all(c.dtype == object for c in cols):
        cols = [c.astype(object) if c.ndim == 1 else c for c in cols]
    return np.concatenate(cols)


def split_rows(block: Block, n: int) -> list[Block]:
    """The block cut into n consecutive parts whose sizes differ by at most one row."""
    rows = num_rows(block)
    bounds = [rows * i // n for i in range(n + 1)]
    return [slice_block(block, bounds[i], bounds[i + 1]) for i in range(n)]


def batches_of(block: Block, batch_size: int | None) -> Iterator[Block]:
    rows = num_rows(block)
    if batch_size is None or rows <= batch_size:
        yield block
        return
    for start in range(0, rows, batch_size):
        yield slice_block(block, start, start + batch_size)


class Batcher:
    """Cuts a stream of blocks into batches of batch_size rows, optionally through a local
    shuffle buffer (rows are drawn at random once the buffer holds enough)."""

    def __init__(self, batch_size: int | None, drop_last: bool = False,
                 shuffle_buffer_size: int | None = None, shuffle_seed: int | None = None):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size}")
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.shuffle_buffer = shuffle_buffer_size
        self.rng = np.random.default_rng(shuffle_seed)

    def batches(self, blocks: Iterable[Block]) -> Iterator[Block]:
        if self.shuffle_buffer:
            yield from self._shuffled(blocks)
            return
        if self.batch_size is None:
            for b in blocks:
                if num_rows(b):
                    yield b
            return
        pending: list[Block] = []
        have = 0
        size = self.batch_size
        for b in blocks:
            rows = num_rows(b)
            if not rows:
                continue
            start = 0
            if pending:  # finish the partial batch first
                need = size - have
                pending.append(slice_block(b, 0, need))
                start = min(need, rows)
                have += start
                if have < size:
                    continue
                yield concat(pending)
                pending, have = [], 0
            while rows - start >= size:
                yield slice_block(b, start, start + size)
                start += size
            if start < rows:
                pending, have = [slice_block(b, start, rows)], rows - start
        if pending and not self.drop_last:
            yield concat(pending)

    def _shuffled(self, blocks: Iterable[Block]) -> Iterator[Block]:
        size = self.batch_size or 256
        buf: Block = {}
        for b in blocks:
            if not num_rows(b):
                continue
            buf = concat([buf, b]) if buf else b
            while num_rows(buf) >= self.shuffle_buffer + size:
                batch, buf = self._draw(buf, size)
                yield batch
        while num_rows(buf) >= size:
            batch, buf = self._draw(buf, size)
            yield batch
        if buf and num_rows(buf) and not self.drop_last:
            yield take_rows(buf, self.rng.permutation(num_rows(buf)))

    def _draw(self, buf: Block, size: int) -> tuple[Block, Block]:
        n = num_rows(buf)
        pick = self.rng.choice(n, size, replace=False)
        keep = np.ones(n, dtype=bool)
        keep[pick] = False
        return take_rows(buf, pick), take_rows(buf, np.nonzero(keep)[0])


# ---------------------------------------------------------------------------------------------
# sorting and grouping
# ---------------------------------------------------------------------------------------------

def sort_indices(block: Block, keys: list[str], descending: bool | list[bool] = False
                 ) -> np.ndarray:
    """A stable order of the block's rows by keys (the first key most significant)."""
    desc = descending if isinstance(descending, list) else [descending] * len(keys)
    order = np.arange(num_rows(block))
    for key, d in reversed(list(zip(keys, desc))):
        col = block[key][order]
        idx = _stable_desc(col) if d else np.argsort(col, kind="stable")
        order = order[idx]
    return order


def _stable_desc(col: np.ndarray) -> np.ndarray:
    n = len(col)
    rev = np.argsort(col[::-1], kind="stable")  # ascending over the reversed column
    return (n - 1 - rev)[::-1]


def sort_block(block: Block, keys: list[str], descending: bool | list[bool] = False) -> Block:
    return take_rows(block, sort_indices(block, keys, descending))


def range_partition(block: Block, key: str, bounds: np.ndarray, descending: bool) -> list[Block]:
    """The block cut into len(bounds)+1 parts by key: part i has bounds[i-1] <= key < bounds[i]
    (the reverse order when descending)."""
    col = block[key]
    part = np.searchsorted(bounds, col, side="right") if len(bounds) else np.zeros(len(col), int)
    if descending:
        part = len(bounds) - part
    order = np.argsort(part, kind="stable")
    counts = np.bincount(part, minlength=len(bounds) + 1)
    edges = np.concatenate([[0], np.cumsum(counts)])
    return [take_rows(block, order[edges[i]:edges[i + 1]]) for i in range(len(bounds) + 1)]


def quantile_bounds(samples: np.ndarray, parts: int) -> np.ndarray:
    """parts-1 boundaries that cut the sorted samples into parts of about equal size."""
    if parts <= 1 or len(samples) == 0:
        return samples[:0]
    s = np.sort(samples, kind="stable")
    idx = [len(s) * i // parts for i in range(1, parts)]
    return s[idx]


def group_bounds(block: Block, keys: list[str]) -> np.ndarray:
    """Start offsets of runs of equal keys in a block sorted by keys, plus the end."""
    n = num_rows(block)
    if n == 0:
        return np.array([0])
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        col = block[k]
        change[1:] |= col[1:] != col[:-1]
    return np.concatenate([np.nonzero(change)[0], [n]])
