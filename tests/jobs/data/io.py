"""Reads of every format from small random files, and writes read back; prints OK lines."""

import itertools
import json
import os
import sys

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import hpcray
import hpcray.data as rd
from hpcray.data.block import BlockMetadata

hpcray.init()
d = sys.argv[1]
rng = np.random.default_rng(7)


def ok(name: str) -> None:
    print("OK", name, flush=True)


# numpy: two .npy files, blocks are row ranges of memory-mapped files
a = rng.normal(size=(1000, 4)).astype(np.float32)
b = rng.normal(size=(333, 4)).astype(np.float32)
os.makedirs(f"{d}/npy")
np.save(f"{d}/npy/a.npy", a)
np.save(f"{d}/npy/b.npy", b)
ds = rd.read_numpy(f"{d}/npy", override_num_blocks=6)
got = np.concatenate([x["data"] for x in ds.iter_batches(batch_size=None)])
assert np.array_equal(got, np.concatenate([a, b])) and ds.count() == 1333
assert ds.materialize().num_blocks() >= 6
np.savez(f"{d}/c.npz", c=a[:10])
assert np.array_equal(rd.read_numpy(f"{d}/c.npz").take_batch(10)["data"], a[:10])
ok("read_numpy")

# HDF5: two datasets of equal length as columns, chunked; a hyperslab per task
x = rng.normal(size=(2500, 3, 2))
y = rng.integers(0, 10, 2500)
with h5py.File(f"{d}/data.h5", "w") as f:
    f.create_dataset("x", data=x, chunks=(100, 3, 2))
    f.create_dataset("grp/y", data=y)
ds = rd.read_hdf5(f"{d}/data.h5", datasets=["x", "grp/y"], override_num_blocks=7)
batches = list(ds.iter_batches(batch_size=None))
assert all(len(bt["x"]) % 100 == 0 for bt in batches[:-1])  # cut at chunk boundaries
assert np.array_equal(np.concatenate([bt["x"] for bt in batches]), x)
assert np.array_equal(np.concatenate([bt["grp/y"] for bt in batches]), y)
ds2 = rd.read_hdf5([f"{d}/data.h5", f"{d}/data.h5"], datasets="grp/y")
assert ds2.count() == 5000 and ds2.sum("grp/y") == 2 * y.sum()
ok("read_hdf5")

try:
    import zarr
except ImportError:
    print("OK read_zarr (skipped: no zarr)", flush=True)
else:
    z = zarr.open(f"{d}/x.zarr", mode="w", shape=x.shape, chunks=(128, 3, 2), dtype="f8")
    z[:] = x
    zs = rd.read_zarr(f"{d}/x.zarr", override_num_blocks=4).map_batches(
        lambda bt: {"s": bt["data"].sum(axis=(1, 2))})
    assert np.allclose(np.concatenate([bt["s"] for bt in zs.iter_batches(batch_size=None)]),
                       x.sum(axis=(1, 2)))
    ok("read_zarr")

# parquet, csv, json, text, binary
df = pd.DataFrame({"i": rng.integers(0, 100, 500), "f": rng.normal(size=500),
                   "s": [f"s{i}" for i in range(500)]})
os.makedirs(f"{d}/pq")
pq.write_table(pa.Table.from_pandas(df.iloc[:200]), f"{d}/pq/0.parquet", row_group_size=50)
pq.write_table(pa.Table.from_pandas(df.iloc[200:]), f"{d}/pq/1.parquet", row_group_size=50)
out = rd.read_parquet(f"{d}/pq").to_pandas()
pd.testing.assert_frame_equal(out[["i", "f", "s"]], df)
assert rd.read_parquet(f"{d}/pq", columns=["f"]).columns() == ["f"]
df.iloc[:250].to_csv(f"{d}/a.csv", index=False)
df.iloc[250:].to_csv(f"{d}/b.csv", index=False)
pd.testing.assert_frame_equal(rd.read_csv([f"{d}/a.csv", f"{d}/b.csv"]).to_pandas(), df)
df.to_json(f"{d}/x.jsonl", orient="records", lines=True)
pd.testing.assert_frame_equal(rd.read_json(f"{d}/x.jsonl").to_pandas(), df)
with open(f"{d}/arr.json", "w") as fh:
    json.dump(df.iloc[:5].to_dict("records"), fh)
assert rd.read_json(f"{d}/arr.json").count() == 5
with open(f"{d}/t.txt", "w") as fh:
    fh.write("alpha\nbeta\n\ngamma\n")
assert [r["text"] for r in rd.read_text(f"{d}/t.txt").take_all()] == ["alpha", "beta", "gamma"]
bins = rd.read_binary_files(f"{d}/t.txt", include_paths=True).take_all()
assert bins[0]["bytes"] == b"alpha\nbeta\n\ngamma\n" and bins[0]["path"].endswith("t.txt")
ok("read_parquet, read_csv, read_json, read_text, read_binary_files")

try:
    from PIL import Image
except ImportError:
    print("OK read_images (skipped: no Pillow)", flush=True)
else:
    os.makedirs(f"{d}/img")
    pics = [rng.integers(0, 255, (12, 10, 3), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pics):
        Image.fromarray(p).save(f"{d}/img/{i}.png")
    imgs = rd.read_images(f"{d}/img").take_batch(3)["image"]
    assert imgs.shape == (3, 12, 10, 3) and all((imgs[i] == pics[i]).all() for i in range(3))
    small = rd.read_images(f"{d}/img", size=(6, 5), mode="L").take_batch(3)["image"]
    assert small.shape == (3, 6, 5)
    ok("read_images")



class SquaresDatasource(rd.Datasource):
    """A user's datasource: rows (i, i*i, a seeded noise), each read task making two
    blocks, one pandas and one pyarrow."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n = n
        self.fail_at = fail_at

    def estimate_inmemory_data_size(self) -> int:
        return self.n * 24

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        bounds = np.linspace(0, self.n, parallelism + 1).astype(int)
        return [rd.ReadTask(lambda a=a, b=b: self._read(a, b),
                            BlockMetadata(num_rows=b - a, size_bytes=(b - a) * 24))
                for a, b in itertools.pairwise(bounds)]

    def _read(self, a: int, b: int) -> list:
        if self.fail_at is not None and a <= self.fail_at < b:
            raise OSError(f"cannot read row {self.fail_at}")
        i = np.arange(a, b)
        noise = np.random.default_rng(a).normal(size=b - a)
        mid = (a + b) // 2
        return [pd.DataFrame({"i": i[:mid - a], "sq": i[:mid - a] ** 2, "z": noise[:mid - a]}),
                pa.table({"i": i[mid - a:], "sq": i[mid - a:] ** 2, "z": noise[mid - a:]})]


custom = rd.read_datasource(SquaresDatasource(1000), override_num_blocks=3)
assert custom.count() == 1000 and custom.num_blocks() == 3
got = custom.to_pandas()
ref_bounds = np.linspace(0, 1000, 4).astype(int)
ref_z = np.concatenate([np.random.default_rng(a).normal(size=b - a)
                        for a, b in itertools.pairwise(ref_bounds)])
assert (got["i"] == np.arange(1000)).all() and (got["sq"] == got["i"] ** 2).all()
assert np.array_equal(got["z"].to_numpy(), ref_z)
assert rd.read_datasource(SquaresDatasource(1000)).map_batches(
    lambda bt: {"s": bt["sq"]}).sum("s") == (np.arange(1000) ** 2).sum()
try:
    rd.read_datasource(SquaresDatasource(1000, fail_at=700), override_num_blocks=3).take_all()
    raise AssertionError("no error")
except rd.UserCodeException as exc:
    assert "read task 2 of Squares" in str(exc) and "row 700" in str(exc), exc
ok("read_datasource (a user's Datasource)")

# writes, read back
src = rd.from_pandas(df).repartition(3)
for fmt, reader in (("parquet", rd.read_parquet), ("csv", rd.read_csv), ("json", rd.read_json)):
    getattr(src, f"write_{fmt}")(f"{d}/out_{fmt}")
    assert len(os.listdir(f"{d}/out_{fmt}")) == 3
    pd.testing.assert_frame_equal(reader(f"{d}/out_{fmt}").to_pandas()[["i", "f", "s"]], df)
rd.from_numpy(a).repartition(4).write_numpy(f"{d}/out_npy", column="data")
assert np.array_equal(np.concatenate(
    [bt["data"] for bt in rd.read_numpy(f"{d}/out_npy").iter_batches(batch_size=None)]), a)
rd.read_hdf5(f"{d}/data.h5", datasets=["x", "grp/y"]).map_batches(
    lambda bt: {"x": bt["x"] * 2, "y": bt["grp/y"]}).write_hdf5(f"{d}/out.h5")
with h5py.File(f"{d}/out.h5", "r") as f:
    assert np.array_equal(f["x"][:], 2 * x) and np.array_equal(f["y"][:], y)
back = rd.read_hdf5(f"{d}/out.h5", datasets=["x", "y"], override_num_blocks=3)
assert np.array_equal(np.concatenate([bt["x"] for bt in back.iter_batches(batch_size=None)]), 2 * x)
ok("write_parquet, write_csv, write_json, write_numpy, write_hdf5")
hpcray.shutdown()
