"""Writes: ``write_datasink`` runs a Datasink's write() in a task per block on the rank that
holds it, streaming as the dataset executes; the built-in writers are Datasinks writing a file
per block (named by task index, so reading the folder back gives the rows in order)."""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np

import hpcray

from .block import Block, num_rows, size_bytes, to_arrow, to_batch
from .datasink import Datasink, TaskContext, WriteResult
from .executor import UserCodeException, job_cpus, remote

EXT = {"parquet": "parquet", "csv": "csv", "json": "json", "npy": "npy", "h5": "h5"}


def _write_task(sink: Datasink, idx: int, name: str, first_row: int, *blocks: Block
                ) -> tuple[Any, int, int]:
    """One write task: (what write() returned, rows, bytes)."""
    rows = sum(num_rows(b) for b in blocks)
    fmt = getattr(sink, "block_format", "pyarrow")
    try:
        out = sink.write([to_batch(b, fmt) for b in blocks], TaskContext(idx, name))
    except UserCodeException:
        raise
    except Exception as exc:
        raise UserCodeException(f"operator {name} failed on write task {idx} (rows "
                                f"{first_row}-{first_row + rows}): {type(exc).__name__}: "
                                f"{exc}") from exc
    return out, rows, sum(size_bytes(b) for b in blocks)


def _start(sink: Datasink, schema: Any) -> None:
    """on_write_start(schema), or on_write_start() for sinks written for Ray < 2.44."""
    try:
        takes_schema = bool(inspect.signature(sink.on_write_start).parameters)
    except (TypeError, ValueError):
        takes_schema = True
    if takes_schema:
        sink.on_write_start(schema)
    else:
        sink.on_write_start()


def write_datasink(ds, sink: Datasink, ray_remote_args: dict | None = None,
                   concurrency: int | None = None) -> None:
    """Streams the dataset through sink (see Datasink for the calls and where they run)."""
    from .block import BATCH_FORMATS
    from .dataset import Schema

    fmt = getattr(sink, "block_format", "pyarrow")
    if fmt not in BATCH_FORMATS:
        raise ValueError(f"{type(sink).__name__}.block_format must be one of {BATCH_FORMATS}, "
                         f"got {fmt!r}")
    name = f"Write({sink.get_name()})"
    opts = {"name": name, **(ray_remote_args or {})}
    limit = concurrency or max(2, 2 * job_cpus())
    min_rows = sink.min_rows_per_write or 0
    local = not sink.supports_distributed_writes
    results: list = []  # per task: a ref, or the local result
    inflight: list = []
    started = False
    try:
        group: list = []
        rows = at = 0

        def flush() -> None:
            nonlocal rows, at
            idx = len(results)
            if local:
                results.append(_write_task(sink, idx, name, at, *hpcray.get(group)))
            else:
                results.append(remote(_write_task, **opts).remote(sink, idx, name, at, *group))
                inflight.append(results[-1])
                if len(inflight) >= limit:
                    _, inflight[:] = hpcray.wait(inflight, num_returns=1)
            at += rows
            group.clear()
            rows = 0

        for ref, meta in ds._bundles():
            if not meta["rows"]:
                continue
            if not started:
                _start(sink, Schema(meta["schema"]) if meta["schema"] else None)
                started = True
            group.append(ref)
            rows += meta["rows"]
            if rows >= min_rows:
                flush()
        if group:
            flush()
        if not started:
            _start(sink, None)
        done = [hpcray.get(r) if isinstance(r, hpcray.ObjectRef) else r for r in results]
        sink.on_write_complete(WriteResult(sum(r[1] for r in done), sum(r[2] for r in done),
                                           [r[0] for r in done]))
    except Exception as exc:
        sink.on_write_failed(exc)
        raise


# ------------------------------------------------------------------------------ file sinks

def write_file(block: Block, fmt: str, file: str, kwargs: dict) -> None:
    """One block as one file of the format."""
    if fmt == "npy":
        col = kwargs.get("column") or (next(iter(block)) if len(block) == 1 else None)
        if col is None:
            raise ValueError(f"write_numpy needs column= when there are several columns "
                             f"({list(block)})")
        np.save(file, block[col])
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(to_arrow(block), file, **kwargs)
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(to_arrow(block), file, **kwargs)
    elif fmt == "json":
        import pandas as pd

        pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in block.items()}).to_json(
            file, orient="records", lines=True, **kwargs)
    elif fmt == "h5":
        import h5py

        with h5py.File(file, "w") as f:
            for k, v in block.items():
                if v.dtype == object:
                    f.create_dataset(k, data=np.array([str(x) for x in v], dtype=object),
                                     dtype=h5py.string_dtype())
                else:
                    f.create_dataset(k, data=v)
    else:
        raise ValueError(f"unknown format {fmt}")


class FileDatasink(Datasink):
    """A file per block in a folder: ``{write id}_{task index}_{block index}.{ext}``."""

    block_format = "numpy"

    def __init__(self, path: str, fmt: str, kwargs: dict | None = None):
        self.path = os.fspath(path).removeprefix("local://")
        self.fmt = fmt
        self.kwargs = dict(kwargs or {})
        self.prefix = uuid.uuid4().hex[:12]

    def get_name(self) -> str:
        return self.fmt.capitalize()

    def on_write_start(self, schema: Any = None) -> None:
        os.makedirs(self.path, exist_ok=True)

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> list[tuple[str, int]]:
        """[(file, rows)] of the files written."""
        out = []
        for j, block in enumerate(blocks):
            file = os.path.join(self.path, f"{self.prefix}_{ctx.task_idx:06d}_{j:06d}."
                                           f"{EXT[self.fmt]}")
            try:
                write_file(block, self.fmt, file, self.kwargs)
            except Exception as exc:
                raise UserCodeException(f"writing {file} ({num_rows(block)} rows) failed: "
                                        f"{type(exc).__name__}: {exc}") from exc
            out.append((file, num_rows(block)))
        return out


class HDF5Datasink(FileDatasink):
    """One HDF5 file: each block written by its task to ``path.parts/``, then joined in path
    as virtual datasets (no copy)."""

    def __init__(self, path: str):
        self.target = os.fspath(path).removeprefix("local://")
        super().__init__(self.target + ".parts", "h5")

    def get_name(self) -> str:
        return "HDF5"

    def on_write_complete(self, write_result: WriteResult) -> None:
        import h5py

        written = [w for task in write_result.write_returns for w in task]
        if not written:
            raise ValueError("write_hdf5: the dataset has no rows to write")
        with h5py.File(written[0][0], "r") as f:
            schema = {k: (f[k].dtype, f[k].shape[1:]) for k in f}
        total = sum(rows for _, rows in written)
        base = os.path.dirname(os.path.abspath(self.target))
        with h5py.File(self.target, "w") as out:
            for k, (dtype, shape) in schema.items():
                layout = h5py.VirtualLayout(shape=(total, *shape), dtype=dtype)
                at = 0
                for file, rows in written:
                    layout[at:at + rows] = h5py.VirtualSource(os.path.relpath(file, base), k,
                                                              shape=(rows, *shape))
                    at += rows
                out.create_virtual_dataset(k, layout)
