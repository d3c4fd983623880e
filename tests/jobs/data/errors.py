"""Failures name the operator, the file and the rows; bad inputs fail before any work."""

import os
import sys

import h5py
import numpy as np
import pandas as pd

import hpcray
import hpcray.data as rd
from hpcray.data import UserCodeException

hpcray.init()
d = sys.argv[1]


def ok(name: str) -> None:
    print("OK", name, flush=True)


def boom(batch):
    if (batch["id"] == 777).any():
        raise ValueError("bad row 777")
    return batch


try:
    rd.range(1000, override_num_blocks=4).map_batches(boom, batch_size=None).take_all()
    raise AssertionError("no error")
except UserCodeException as exc:
    msg = str(exc)
    assert "MapBatches(boom)" in msg and "rows 750-1000" in msg and "bad row 777" in msg, msg
ok("a UDF error names the operator and the rows")

with h5py.File(f"{d}/a.h5", "w") as f:
    f.create_dataset("x", data=np.arange(100.0))


try:
    rd.read_hdf5(f"{d}/a.h5", "x", override_num_blocks=2).map_batches(
        lambda b: 1 / 0 if b["x"][0] >= 50 else b).take_all()
    raise AssertionError("no error")
except UserCodeException as exc:
    msg = str(exc)
    assert f"{d}/a.h5 rows 50-100" in msg and "ZeroDivisionError" in msg, msg
ok("an error after a read names the file and the rows")

for bad, what in ((lambda: rd.read_hdf5(f"{d}/missing.h5", "x"), "missing.h5"),
                  (lambda: rd.read_hdf5(f"{d}/a.h5", "nope"), "nope"),
                  (lambda: rd.read_numpy(f"{d}/nothing/*.npy"), "nothing")):
    try:
        bad()
        raise AssertionError("no error")
    except (FileNotFoundError, KeyError) as exc:
        assert what in str(exc), exc
os.makedirs(f"{d}/pq")
pd.DataFrame({"a": [1, 2]}).to_parquet(f"{d}/pq/0.parquet")
pd.DataFrame({"a": ["x", "y"]}).to_parquet(f"{d}/pq/1.parquet")
try:
    rd.read_parquet(f"{d}/pq")
    raise AssertionError("no error")
except ValueError as exc:
    assert "0.parquet" in str(exc) and "1.parquet" in str(exc) and "schemas" in str(exc), exc
ok("missing files, datasets and mismatched schemas fail at creation")

try:
    rd.range(10).map_batches(lambda b: b, batch_format="arrow")
    raise AssertionError("no error")
except ValueError as exc:
    assert "batch_format" in str(exc)
ok("bad arguments say what to do")
hpcray.shutdown()
