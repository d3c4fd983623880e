"""hpcray.data: Ray Data's Dataset API on the job's ranks.

    import hpcray.data
    ds = hpcray.data.read_hdf5("train.h5", datasets=["x", "y"]).map_batches(normalize)
    for batch in ds.iter_batches(batch_size=1024):
        ...

Blocks are hpcray objects made by tasks on worker ranks; they move rank to rank, never through
the driver, and a streaming executor bounds the bytes in flight per operator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import datasource as _src
from .aggregate import AggregateFn, Count, Max, Mean, Min, Std, Sum
from .block import from_batch as _from_batch
from .context import DataContext, ExecutionOptions, ExecutionResources
from .dataset import (
    ActorPoolStrategy,
    DataIterator,
    Dataset,
    GroupedData,
    MaterializedDataset,
    Schema,
    TaskPoolStrategy,
    default_min_blocks,
    from_blocks_local,
    items_to_blocks,
)
from .datasink import Datasink, WriteResult
from .datasource import Datasource, ReadTask
from .executor import DatasetStats, Plan, UserCodeException

__all__ = [
    "ActorPoolStrategy",
    "AggregateFn",
    "Count",
    "DataContext",
    "DataIterator",
    "Dataset",
    "DatasetStats",
    "Datasink",
    "Datasource",
    "ExecutionOptions",
    "ExecutionResources",
    "GroupedData",
    "MaterializedDataset",
    "Max",
    "Mean",
    "Min",
    "ReadTask",
    "Schema",
    "Std",
    "Sum",
    "TaskPoolStrategy",
    "UserCodeException",
    "WriteResult",
    "from_arrow",
    "from_items",
    "from_numpy",
    "from_numpy_refs",
    "from_pandas",
    "range",
    "range_tensor",
    "read_binary_files",
    "read_csv",
    "read_datasource",
    "read_hdf5",
    "read_images",
    "read_json",
    "read_numpy",
    "read_parquet",
    "read_text",
    "read_zarr",
]


def _ds(source, override_num_blocks: int | None) -> Dataset:
    return Dataset(Plan(source, [], override_num_blocks))


def range(n: int, *, override_num_blocks: int | None = None, **kwargs) -> Dataset:
    """Rows {"id": 0..n-1}."""
    return _ds(_src.range_source(int(n), None, default_min_blocks), override_num_blocks)


def range_tensor(n: int, *, shape: tuple = (1,), override_num_blocks: int | None = None,
                 **kwargs) -> Dataset:
    """Rows {"data": an array of shape filled with the row's index}."""
    return _ds(_src.range_source(int(n), tuple(shape), default_min_blocks), override_num_blocks)


def from_items(items: list, *, override_num_blocks: int | None = None, **kwargs) -> Dataset:
    """Rows from dicts (other items become {"item": x})."""
    return from_blocks_local(items_to_blocks(list(items), override_num_blocks))


def from_numpy(ndarrays: np.ndarray | list[np.ndarray]) -> MaterializedDataset:
    """A block per array, as the column "data"."""
    arrays = [ndarrays] if isinstance(ndarrays, np.ndarray) else list(ndarrays)
    return from_blocks_local([{"data": np.asarray(a)} for a in arrays])


def from_pandas(dfs: Any, override_num_blocks: int | None = None) -> MaterializedDataset:
    """A block per DataFrame."""
    dfs = dfs if isinstance(dfs, list) else [dfs]
    return from_blocks_local([_from_batch(df) for df in dfs])


def from_arrow(tables: Any, *, override_num_blocks: int | None = None) -> MaterializedDataset:
    """A block per pyarrow Table."""
    tables = tables if isinstance(tables, list) else [tables]
    return from_blocks_local([_from_batch(t) for t in tables])


def from_numpy_refs(refs: list) -> Dataset:
    import hpcray

    return from_numpy(hpcray.get(list(refs)))


def read_numpy(paths: str | list[str], *, override_num_blocks: int | None = None,
               **kwargs) -> Dataset:
    """.npy files (memory-mapped, a row range per read task) and .npz files; column "data"."""
    return _ds(_src.numpy_source(paths, override_num_blocks, default_min_blocks),
               override_num_blocks)


def read_hdf5(paths: str | list[str], datasets: str | list[str] | None = None, *,
              override_num_blocks: int | None = None, **kwargs) -> Dataset:
    """HDF5 datasets of equal length as columns (None: every array in the file). Each read
    task opens the file itself and reads its own hyperslab of rows, cut at chunk boundaries."""
    return _ds(_src.hdf5_source(paths, datasets, override_num_blocks, default_min_blocks),
               override_num_blocks)


def read_zarr(paths: str | list[str], arrays: str | list[str] | None = None, *,
              override_num_blocks: int | None = None, **kwargs) -> Dataset:
    """Zarr stores: an array becomes the column "data"; a group's arrays (all, or those
    named) become columns. Blocks are cut at chunk boundaries; each task opens the store."""
    return _ds(_src.zarr_source(paths, arrays, override_num_blocks, default_min_blocks),
               override_num_blocks)


def read_parquet(paths: str | list[str], *, columns: list[str] | None = None,
                 override_num_blocks: int | None = None, **kwargs) -> Dataset:
    """Parquet files; read tasks take whole row groups. Files must share one schema."""
    return _ds(_src.parquet_source(paths, columns, override_num_blocks, default_min_blocks),
               override_num_blocks)


def read_csv(paths: str | list[str], *, override_num_blocks: int | None = None,
             **arrow_csv_args) -> Dataset:
    """CSV files (pyarrow.csv.read_csv options pass through); a read task per file."""
    return _ds(_src.csv_source(paths, arrow_csv_args), override_num_blocks)


def read_json(paths: str | list[str], *, override_num_blocks: int | None = None,
              **arrow_json_args) -> Dataset:
    """JSON lines files (or files holding one JSON array); a read task per file."""
    return _ds(_src.json_source(paths, arrow_json_args), override_num_blocks)


def read_text(paths: str | list[str], *, encoding: str = "utf-8", drop_empty_lines: bool = True,
              override_num_blocks: int | None = None, **kwargs) -> Dataset:
    """A row {"text": line} per line."""
    return _ds(_src.text_source(paths, encoding, drop_empty_lines), override_num_blocks)


def read_binary_files(paths: str | list[str], *, include_paths: bool = False,
                      override_num_blocks: int | None = None, **kwargs) -> Dataset:
    """A row {"bytes": contents} per file."""
    return _ds(_src.binary_source(paths, include_paths), override_num_blocks)


def read_images(paths: str | list[str], *, size: tuple[int, int] | None = None,
                mode: str | None = None, include_paths: bool = False,
                override_num_blocks: int | None = None, **kwargs) -> Dataset:
    """A row {"image": HxWxC array} per image file (Pillow); size=(H, W) resizes."""
    return _ds(_src.image_source(paths, size, mode, include_paths), override_num_blocks)


def read_datasource(datasource: Datasource, *, parallelism: int = -1,
                    num_cpus: float | None = None, num_gpus: float | None = None,
                    memory: float | None = None, ray_remote_args: dict | None = None,
                    concurrency: int | None = None, override_num_blocks: int | None = None,
                    **read_args) -> Dataset:
    """A custom Datasource's data: its get_read_tasks(n) are planned on the driver and each
    ReadTask runs as a task on the job's ranks. n is override_num_blocks (or the deprecated
    parallelism), else enough for ~DataContext.read_block_size blocks by the source's
    estimate_inmemory_data_size() and at least twice the job's CPUs."""
    blocks = override_num_blocks or (parallelism if parallelism > 0 else None)
    return _ds(_src.custom_source(datasource, default_min_blocks), blocks)
