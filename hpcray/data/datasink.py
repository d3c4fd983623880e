"""Datasink: Ray Data's interface for custom writers (``Dataset.write_datasink``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WriteResult:
    """What the write tasks of one ``write_datasink`` did, handed to ``on_write_complete``."""

    num_rows: int
    size_bytes: int
    write_returns: list  # what each write() call returned, in the dataset's order

    @classmethod
    def combine(cls, *results: WriteResult) -> WriteResult:
        return cls(sum(r.num_rows for r in results), sum(r.size_bytes for r in results),
                   list(itertools.chain.from_iterable(r.write_returns for r in results)))


@dataclass
class TaskContext:
    """Passed to ``Datasink.write``: which write task this is (numbered in the dataset's
    order from 0) and the operator's name."""

    task_idx: int
    op_name: str = "Write"
    kwargs: dict = field(default_factory=dict)


class Datasink:
    """Where ``Dataset.write_datasink(sink)`` writes: subclass it and define ``write``.

    ``on_write_start(schema)`` runs on the driver when the first block is ready (schema: the
    dataset's ``Schema``), ``write(blocks, ctx)`` in a task per block (or per
    ``min_rows_per_write`` rows) on the rank holding the data, and on the driver
    ``on_write_complete(WriteResult)`` once every task has returned (commit here), or
    ``on_write_failed(error)`` with the first error before it is raised.

    hpcray addition: ``block_format`` sets what ``write`` gets: "pyarrow" Tables (the
    default, as Ray's blocks), "pandas" DataFrames, or "numpy" dicts of arrays (hpcray's own
    blocks, no conversion)."""

    block_format: str = "pyarrow"

    def on_write_start(self, schema: Any = None) -> None:
        """Setup before any write task starts (e.g. create a folder or a staging table)."""

    def write(self, blocks: Iterable[Any], ctx: TaskContext) -> Any:
        """Writes the blocks of one task; the return value goes into the WriteResult."""
        raise NotImplementedError(f"{type(self).__name__} must define write(blocks, ctx)")

    def on_write_complete(self, write_result: WriteResult) -> None:
        """Runs once every write task succeeded; if it raises, on_write_failed runs."""

    def on_write_failed(self, error: Exception) -> None:
        """Runs with the first error of the write (best effort), before it is raised."""

    def get_name(self) -> str:
        """The name of the write operator and its tasks: the class name without "Datasink"."""
        name = type(self).__name__.lstrip("_")
        return name.removesuffix("Datasink") or name

    @property
    def supports_distributed_writes(self) -> bool:
        """False: every write() runs in the driver process (for sinks that must run there)."""
        return True

    @property
    def min_rows_per_write(self) -> int | None:
        """Blocks are gathered into one write() call until they hold this many rows."""
        return None
