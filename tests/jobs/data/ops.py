"""Every hpcray.data operator on random data, checked against numpy/pandas; prints OK lines."""

import importlib.util
import os
import re
import sys

import numpy as np
import pandas as pd

import hpcray
import hpcray.data as rd
from hpcray.data import AggregateFn

hpcray.init()
rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
N = 2000
df = pd.DataFrame({"k": rng.integers(0, 7, N), "x": rng.normal(size=N),
                   "y": rng.integers(-50, 50, N)})
items = df.to_dict("records")


def ok(name: str) -> None:
    print("OK", name, flush=True)


def frame(ds) -> pd.DataFrame:
    return ds.to_pandas().reset_index(drop=True)


def same_multiset(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = list(b.columns)
    pd.testing.assert_frame_equal(a[cols].sort_values(cols).reset_index(drop=True),
                                  b.sort_values(cols).reset_index(drop=True), check_dtype=False)


ds = rd.from_items(items, override_num_blocks=7)
pd.testing.assert_frame_equal(frame(ds), df, check_dtype=False)
assert ds.count() == N and ds.columns() == ["k", "x", "y"]
ok("from_items")

# range, range_tensor
r = rd.range(1003, override_num_blocks=5)
assert r.count() == 1003 and [row["id"] for row in r.take_all()] == list(range(1003))
t = rd.range_tensor(10, shape=(2, 3))
arr = np.concatenate([b["data"] for b in t.iter_batches(batch_size=4)])
assert arr.shape == (10, 2, 3) and (arr[:, 1, 2] == np.arange(10)).all()
ok("range")

# map, map_batches (numpy, pandas, pyarrow), flat_map, filter
m = frame(ds.map(lambda row: {"k": row["k"], "z": row["x"] * 2}))
assert np.allclose(m["z"], df["x"] * 2) and (m["k"] == df["k"]).all()
for fmt in ("numpy", "pandas", "pyarrow"):
    def f(batch, scale, fmt=fmt):
        if fmt == "pyarrow":
            batch = batch.to_pandas()
        return {"x": np.asarray(batch["x"]) * scale, "y": np.asarray(batch["y"])}
    out = frame(ds.map_batches(f, batch_size=64, batch_format=fmt, fn_args=(3.0,)))
    assert np.allclose(out["x"], df["x"] * 3) and (out["y"] == df["y"]).all(), fmt
fm = frame(ds.flat_map(lambda row: [{"y": row["y"]}] * (row["k"] % 3)))
assert (fm["y"].to_numpy() == np.repeat(df["y"].to_numpy(), df["k"] % 3)).all()
flt = frame(ds.filter(lambda row: row["y"] > 10))
pd.testing.assert_frame_equal(flt, df[df["y"] > 10].reset_index(drop=True), check_dtype=False)
ok("map, map_batches, flat_map, filter")


class Affine:
    def __init__(self, a, b=0.0):
        self.a, self.b = a, b

    def __call__(self, batch, c=0.0):
        return {"x": batch["x"] * self.a + self.b + c}


out = frame(ds.map_batches(Affine, fn_constructor_args=(2.0,), fn_constructor_kwargs={"b": 1.0},
                           fn_kwargs={"c": 0.5}, concurrency=2, batch_size=100))
assert np.allclose(out["x"], df["x"] * 2 + 1.5)
out = frame(ds.map_batches(Affine, fn_constructor_args=(1.0,), concurrency=(1, 2),
                           batch_size=None))
assert np.allclose(out["x"], df["x"])


class Who:
    def __call__(self, batch):
        return {"who": np.full(len(batch["x"]), f"{os.getpid()}-{id(self)}", dtype=object)}


who = frame(rd.from_items(items, override_num_blocks=20).map_batches(Who, concurrency=(1, 3)))
assert len(set(who["who"])) == 3 and len(who) == N  # the pool grew from 1 to 3 actors
pooled = rd.from_items(items, override_num_blocks=20).map_batches(
    Affine, fn_constructor_args=(3.0,), compute=rd.ActorPoolStrategy(min_size=1, max_size=3))
assert np.allclose(frame(pooled)["x"], df["x"] * 3)
sizes = [int(n) for n in re.search(r"actors ([\d>-]+)", pooled.stats()).group(1).split("->")]
# grew while input waited, let its idle actors go once the input ran out
assert sizes[0] == 1 and max(sizes) == 3 and sizes[-1] == 1, sizes
small = rd.from_items(items, override_num_blocks=40)  # blocks of 50 rows
for d in (small, small.map_batches(Affine, fn_constructor_args=(1.0,), concurrency=1)):
    out = frame(d.map_batches(lambda b: {"n": np.full(len(b["x"]), len(b["x"])), "x": b["x"]},
                              batch_size=128))
    assert np.allclose(out["x"], df["x"])
    assert out["n"].iloc[0] == 128 and out["n"].max() == 128  # small blocks are bundled
ok("map_batches with a callable class on actors")

# columns
cols = ds.add_column("w", lambda b: b["x"] + b["y"]).drop_columns(["k"]).rename_columns(
    {"w": "sum"})
out = frame(cols)
assert list(out.columns) == ["x", "y", "sum"] and np.allclose(out["sum"], df["x"] + df["y"])
assert frame(ds.select_columns(["y", "k"])).columns.tolist() == ["y", "k"]
ok("add/drop/select/rename columns")

# limit, take, take_batch, show, schema
assert [row["y"] for row in ds.limit(13).take_all()] == df["y"][:13].tolist()
assert ds.limit(0).count() == 0
tb = ds.take_batch(5)
assert (tb["y"] == df["y"][:5].to_numpy()).all()
assert ds.schema().names == ["k", "x", "y"]
ok("limit, take, take_batch, schema")

# iter_batches: sizes, drop_last, local shuffle
sizes = [len(b["y"]) for b in ds.iter_batches(batch_size=300)]
assert sizes == [300] * 6 + [200]
sizes = [len(b["y"]) for b in ds.iter_batches(batch_size=300, drop_last=True)]
assert sizes == [300] * 6
ys = np.concatenate([b["y"] for b in ds.iter_batches(batch_size=128,
                                                     local_shuffle_buffer_size=500,
                                                     local_shuffle_seed=3)])
assert sorted(ys) == sorted(df["y"]) and (ys != df["y"].to_numpy()).any()
rows = list(ds.iter_rows())
assert len(rows) == N and rows[5]["y"] == df["y"][5]
for fmt, kind in (("pandas", pd.DataFrame), ("numpy", dict)):
    assert all(isinstance(b, kind) for b in ds.iter_batches(batch_size=500, batch_format=fmt))
if importlib.util.find_spec("torch") is not None:
    import torch

    tb = list(ds.iter_torch_batches(batch_size=512, dtypes={"x": torch.float32}))
    assert tb[0]["x"].dtype == torch.float32 and tb[0]["y"].dtype == torch.int64
    assert np.allclose(torch.cat([b["x"] for b in tb]).numpy(), df["x"], atol=1e-6)
    sizes = [len(b) for b in ds.iter_torch_batches(batch_size=512, collate_fn=lambda b: b["y"])]
    assert sizes == [512, 512, 512, 464]
ok("iter_batches, iter_rows, iter_torch_batches")

# global aggregates
assert ds.sum("y") == df["y"].sum() and ds.min("x") == df["x"].min()
assert ds.max("y") == df["y"].max()
assert np.isclose(ds.mean("x"), df["x"].mean()) and np.isclose(ds.std("x"), df["x"].std())
ok("sum, min, max, mean, std")

# random_shuffle, randomize_block_order, sort
sh = frame(ds.random_shuffle(seed=5))
same_multiset(sh, df)
assert not sh.equals(df)
pd.testing.assert_frame_equal(sh, frame(ds.random_shuffle(seed=5)))
same_multiset(frame(ds.randomize_block_order(seed=1)), df)
s1 = frame(ds.sort("x"))
pd.testing.assert_frame_equal(s1, df.sort_values("x").reset_index(drop=True), check_dtype=False)
s2 = frame(ds.sort(["k", "y"], descending=[False, True]))
ref = df.sort_values(["k", "y"], ascending=[True, False], kind="stable").reset_index(drop=True)
assert (s2["k"].to_numpy() == ref["k"].to_numpy()).all()
assert (s2["y"].to_numpy() == ref["y"].to_numpy()).all()
s3 = frame(ds.sort("y", descending=True))
assert (s3["y"].to_numpy() == np.sort(df["y"].to_numpy())[::-1]).all()
ok("random_shuffle, randomize_block_order, sort")

# groupby
g = df.groupby("k")
out = frame(ds.groupby("k").count())
assert (out["count()"].to_numpy() == g.size().to_numpy()).all()
for name in ("sum", "min", "max", "mean", "std"):
    out = frame(getattr(ds.groupby("k"), name)("x"))
    assert (out["k"].to_numpy() == np.arange(7)).all()
    assert np.allclose(out[f"{name}(x)"].to_numpy(), getattr(g["x"], name)().to_numpy()), name
two = frame(ds.groupby(["k", "y"]).sum("x"))
ref = df.groupby(["k", "y"])["x"].sum().reset_index()
assert np.allclose(two["sum(x)"], ref["x"]) and (two["y"] == ref["y"]).all()
span = AggregateFn(init=lambda k: (np.inf, -np.inf),
                   accumulate_block=lambda a, b: (min(a[0], b["y"].min()), max(a[1], b["y"].max())),
                   merge=lambda a, b: (min(a[0], b[0]), max(a[1], b[1])),
                   finalize=lambda a: a[1] - a[0], name="span")
out = frame(ds.groupby("k").aggregate(span))
assert (out["span"].to_numpy() == (g["y"].max() - g["y"].min()).to_numpy()).all()
mg = frame(ds.groupby("k").map_groups(lambda b: {"k": b["k"][:1], "n": np.array([len(b["k"])])}))
assert (mg["n"].to_numpy() == g.size().to_numpy()).all()
ok("groupby count/sum/min/max/mean/std/aggregate/map_groups")

# repartition, union, zip
rp = ds.repartition(4).materialize()
assert rp.num_blocks() == 4
pd.testing.assert_frame_equal(frame(rp), df, check_dtype=False)
u = frame(ds.union(rd.from_pandas(df.iloc[:10])))
pd.testing.assert_frame_equal(u, pd.concat([df, df.iloc[:10]]).reset_index(drop=True),
                              check_dtype=False)
z = frame(ds.select_columns(["y"]).zip(rd.from_pandas(df[["x", "y"]]).repartition(3)))
assert list(z.columns) == ["y", "x", "y_1"] and (z["y"] == z["y_1"]).all()
ok("repartition, union, zip")

# random_sample, split, split_at_indices, train_test_split
smp = frame(ds.random_sample(0.3, seed=2))
assert 0.2 * N < len(smp) < 0.4 * N
same_multiset(pd.concat([smp, df]).drop_duplicates(), df.drop_duplicates())
parts = ds.split(3)
same_multiset(pd.concat([frame(p) for p in parts]), df)
parts = ds.split(3, equal=True)
assert [p.count() for p in parts] == [N // 3] * 3
a, b, c = ds.split_at_indices([150, 1234])
assert frame(a)["y"].tolist() == df["y"][:150].tolist()
assert frame(b)["y"].tolist() == df["y"][150:1234].tolist()
assert frame(c)["y"].tolist() == df["y"][1234:].tolist()
tr, te = ds.train_test_split(0.25)
assert te.count() == N // 4 and frame(te)["y"].tolist() == df["y"][-(N // 4):].tolist()
tr, te = ds.train_test_split(100, shuffle=True, seed=1)
same_multiset(pd.concat([frame(tr), frame(te)]), df)
ok("random_sample, split, split_at_indices, train_test_split")

# streaming_split: every row at most once over the consumers; equal sizes; rows are dealt in
# chunks of the batch size, so under one chunk per consumer is dropped at the end
its = ds.streaming_split(2, equal=True)
got = [np.concatenate([b["y"] for b in it.iter_batches(batch_size=100)]) for it in its]
assert len(got[0]) == len(got[1]) == N // 2  # 2000 rows: 10 chunks each
assert sorted(np.concatenate(got)) == sorted(df["y"])
odd = rd.range(1001, override_num_blocks=6).streaming_split(3, equal=True)
ids = [np.concatenate([b["id"] for b in it.iter_batches(batch_size=50)]) for it in odd]
assert len(ids[0]) == len(ids[1]) == len(ids[2]) and 3 * len(ids[0]) > 1001 - 3 * 50
every = np.concatenate(ids)
assert len(np.unique(every)) == len(every) and set(every) <= set(range(1001))
assert (ids[1][:50] == np.arange(50, 100)).all()  # consumer 1's first batch is chunk 1
assert its[1].schema() == ds.schema() and its[1].schema().names == list(df.columns)
ok("streaming_split")

# materialize, to_numpy_refs, stats
mat = ds.map_batches(lambda b: b).materialize()
refs = mat.to_numpy_refs(column="y")
assert (np.concatenate(hpcray.get(refs)) == df["y"].to_numpy()).all()
assert "MapBatches" in mat.stats()
ok("materialize, to_numpy_refs, stats")
hpcray.shutdown()
