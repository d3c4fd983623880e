"""Writes: each block is written by a task on the rank that holds it (files named by block
index, so reading the folder back gives the rows in order)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np

import hpcray

from .block import Block, num_rows, to_arrow
from .executor import UserCodeException, job_cpus, remote

EXT = {"parquet": "parquet", "csv": "csv", "json": "json", "npy": "npy"}


def _write_block(block: Block, fmt: str, path: str, name: str, kwargs: dict) -> str:
    file = os.path.join(path, f"{name}.{EXT.get(fmt, fmt)}")
    try:
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
    except Exception as exc:
        raise UserCodeException(f"writing {file} ({num_rows(block)} rows) failed: "
                                f"{type(exc).__name__}: {exc}") from exc
    return file


def _write_all(ds, fmt: str, path: str, kwargs: dict) -> list[tuple[str, dict]]:
    path = os.fspath(path).removeprefix("local://")
    os.makedirs(path, exist_ok=True)
    prefix = uuid.uuid4().hex[:12]
    pending: list = []
    out: list[tuple[str, dict]] = []
    limit = max(2, 2 * job_cpus())
    for i, (ref, meta) in enumerate(ds._bundles()):
        if meta["rows"] == 0:
            continue
        pending.append((remote(_write_block).remote(ref, fmt, path, f"{prefix}_{i:06d}",
                                                    kwargs), meta))
        if len(pending) >= limit:
            hpcray.wait([p[0] for p in pending], num_returns=len(pending) // 2)
    files = hpcray.get([p[0] for p in pending])
    for f, (_, meta) in zip(files, pending):
        out.append((f, meta))
    return out


def write_files(ds, fmt: str, path: str, kwargs: dict) -> None:
    _write_all(ds, fmt, path, kwargs)


def write_hdf5(ds, path: str) -> None:
    import h5py

    path = os.fspath(path).removeprefix("local://")
    parts_dir = path + ".parts"
    written = _write_all(ds, "h5", parts_dir, {})
    if not written:
        raise ValueError("write_hdf5: the dataset has no rows to write")
    schema: dict[str, Any] = {}
    with h5py.File(written[0][0], "r") as f:
        for k in f:
            schema[k] = (f[k].dtype, f[k].shape[1:])
    total = sum(m["rows"] for _, m in written)
    with h5py.File(path, "w") as out:
        for k, (dtype, shape) in schema.items():
            layout = h5py.VirtualLayout(shape=(total, *shape), dtype=dtype)
            at = 0
            for file, meta in written:
                rows = meta["rows"]
                rel = os.path.relpath(file, os.path.dirname(os.path.abspath(path)))
                layout[at:at + rows] = h5py.VirtualSource(rel, k, shape=(rows, *shape))
                at += rows
            out.create_virtual_dataset(k, layout)
