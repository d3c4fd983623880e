"""A user's Datasink: write() runs per block on the ranks holding the data (pyarrow Tables by
default), its returns reach on_write_complete in order, min_rows_per_write, concurrency,
driver-only sinks, and the failure path (on_write_failed with the first error, then raised)."""

import glob
import os
import sys

import numpy as np
import pandas as pd
import pyarrow as pa

import hpcray
import hpcray.data as rd
from hpcray.data import Datasink, UserCodeException, WriteResult
from hpcray.data.datasource import Datasink as RayPathDatasink

hpcray.init()
d = sys.argv[1]
rng = np.random.default_rng(5)
N = 997
df = pd.DataFrame({"i": np.arange(N), "x": rng.normal(size=N), "k": rng.integers(0, 9, N)})
ds = rd.from_pandas(df).repartition(5)
assert RayPathDatasink is Datasink


def ok(name: str) -> None:
    print("OK", name, flush=True)


class JsonDatasink(Datasink):
    """Each write task writes its rows to a staging folder; on_write_complete commits it."""

    def __init__(self, path: str):
        self.path = path
        self.calls: list = []

    def on_write_start(self, schema=None) -> None:
        self.calls.append(("start", schema.names))
        os.makedirs(self.path + ".staging")

    def write(self, blocks, ctx) -> dict:
        rows = 0
        for j, block in enumerate(blocks):
            assert isinstance(block, pa.Table), type(block)
            block.to_pandas().to_json(f"{self.path}.staging/{ctx.task_idx:04d}_{j}.json",
                                      orient="records", lines=True)
            rows += block.num_rows
        return {"task": ctx.task_idx, "rows": rows, "pid": os.getpid(), "op": ctx.op_name}

    def on_write_complete(self, write_result: WriteResult) -> None:
        self.calls.append(("complete", write_result))
        os.rename(self.path + ".staging", self.path)

    def on_write_failed(self, error: Exception) -> None:
        self.calls.append(("failed", error))


sink = JsonDatasink(f"{d}/out")
ds.write_datasink(sink)
assert [c[0] for c in sink.calls] == ["start", "complete"], sink.calls
assert sink.calls[0][1] == ["i", "x", "k"]
result = sink.calls[1][1]
assert result.num_rows == N and result.size_bytes > 0
assert [r["task"] for r in result.write_returns] == list(range(5))
assert sum(r["rows"] for r in result.write_returns) == N
assert all(r["op"] == "Write(Json)" for r in result.write_returns)
assert os.getpid() not in {r["pid"] for r in result.write_returns}  # on worker ranks
back = pd.concat([pd.read_json(f, lines=True) for f in sorted(glob.glob(f"{d}/out/*.json"))])
pd.testing.assert_frame_equal(back.reset_index(drop=True), df)
ok("a user's Datasink writes every block on the worker ranks and commits on the driver")


class Bad(JsonDatasink):
    def write(self, blocks, ctx):
        for block in blocks:
            if 600 in block.column("i").to_pylist():
                raise RuntimeError("disk full at row 600")
        return super().write(blocks, ctx)


sink = Bad(f"{d}/bad")
try:
    ds.write_datasink(sink)
    raise AssertionError("no error")
except UserCodeException as exc:
    msg = str(exc)
    assert "Write(Bad)" in msg and "disk full at row 600" in msg, msg
    assert "write task 3 (rows 598-797)" in msg, msg  # repartition(5): the 4th block
    assert [c[0] for c in sink.calls] == ["start", "failed"], sink.calls
    assert sink.calls[1][1] is exc
ok("a failing write() reaches on_write_failed, then raises naming the sink and the rows")


class BadCommit(JsonDatasink):
    def on_write_complete(self, write_result):
        raise ValueError("commit refused")


sink = BadCommit(f"{d}/badcommit")
try:
    ds.write_datasink(sink)
    raise AssertionError("no error")
except ValueError as exc:
    assert "commit refused" in str(exc)
    assert [c[0] for c in sink.calls] == ["start", "failed"] and sink.calls[1][1] is exc
ok("a failing on_write_complete reaches on_write_failed")


class Collect(Datasink):
    """Returns its rows; min_rows_per_write, block_format and distribution set per test."""

    def __init__(self, min_rows=None, fmt="numpy", distributed=True, marks=None):
        self._min, self.block_format, self._dist, self.marks = min_rows, fmt, distributed, marks
        self.result = None

    @property
    def min_rows_per_write(self):
        return self._min

    @property
    def supports_distributed_writes(self):
        return self._dist

    def on_write_start(self):  # Ray < 2.44's signature: no schema
        pass

    def write(self, blocks, ctx):
        if self.marks:  # how many write tasks run at once
            mark = f"{self.marks}/{ctx.task_idx}"
            open(mark, "w").close()
            running = len(os.listdir(self.marks))
            os.remove(mark)
        else:
            running = 0
        blocks = list(blocks)
        kinds = {type(b).__name__ for b in blocks}
        ids = np.concatenate([np.asarray(b["i"]) for b in blocks])
        return ids, kinds, os.getpid(), running

    def on_write_complete(self, write_result):
        self.result = write_result


sink = Collect(min_rows=250)
ds.write_datasink(sink)
ids = [r[0] for r in sink.result.write_returns]
assert all(len(i) >= 250 for i in ids[:-1]) and len(ids) < 5, [len(i) for i in ids]
assert (np.concatenate(ids) == np.arange(N)).all()
assert {k for r in sink.result.write_returns for k in r[1]} == {"dict"}
ok("min_rows_per_write gathers blocks in order; block_format='numpy' gives dicts")

sink = Collect(fmt="pandas", distributed=False)
ds.write_datasink(sink)
assert {r[2] for r in sink.result.write_returns} == {os.getpid()}
assert {k for r in sink.result.write_returns for k in r[1]} == {"DataFrame"}
assert (np.concatenate([r[0] for r in sink.result.write_returns]) == np.arange(N)).all()
ok("supports_distributed_writes=False writes in the driver; block_format='pandas'")

os.makedirs(f"{d}/marks")
sink = Collect(marks=f"{d}/marks")
ds.repartition(12).write_datasink(sink, concurrency=1)
assert [r[3] for r in sink.result.write_returns] == [1] * 12
ok("concurrency=1 runs one write task at a time")

try:
    ds.write_datasink(Collect(fmt="arrow"))
    raise AssertionError("no error")
except ValueError as exc:
    assert "block_format" in str(exc) and "pyarrow" in str(exc), exc
ok("a bad block_format is named")

# the built-in writers are Datasinks too: files named by task index read back in order
ds.write_parquet(f"{d}/pq")
assert len(os.listdir(f"{d}/pq")) == 5
pd.testing.assert_frame_equal(rd.read_parquet(f"{d}/pq").to_pandas(), df)
ok("write_parquet through its Datasink")
hpcray.shutdown()
