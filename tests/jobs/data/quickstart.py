"""Ray Data's quickstart and user-guide snippets, ported by their import: ``import ray`` became
``import hpcray as ray`` (plus ``import hpcray.data``); S3 paths became a local iris.csv."""

import os
import sys

import numpy as np

import hpcray as ray
import hpcray.data  # Ray imports ray.data lazily; hpcray needs the import

d = sys.argv[1]
rng = np.random.default_rng(0)
with open(os.path.join(d, "iris.csv"), "w") as f:
    f.write("sepal length (cm),sepal width (cm),petal length (cm),petal width (cm),target\n")
    for _ in range(150):
        a, b, c, e = rng.uniform(0.1, 8, 4).round(1)
        f.write(f"{a},{b},{c},{e},{rng.integers(0, 3)}\n")

# Loading data
ds = ray.data.read_csv(os.path.join(d, "iris.csv"))
ds.show(limit=1)
print(ds.schema())


# Transforming data
def transform_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    vec_a = batch["petal length (cm)"]
    vec_b = batch["petal width (cm)"]
    batch["petal area (cm^2)"] = np.round(vec_a * vec_b, 2)
    return batch


transformed_ds = ds.map_batches(transform_batch)
print(transformed_ds.materialize())

# Consuming data
print(transformed_ds.take_batch(batch_size=3))
for batch in transformed_ds.iter_batches(batch_size=2):
    print(batch)
    break
for row in ds.iter_rows():
    assert set(row) == {"sepal length (cm)", "sepal width (cm)", "petal length (cm)",
                        "petal width (cm)", "target"}

# Saving data
transformed_ds.write_parquet(f"local://{d}/iris/")
print(os.listdir(f"{d}/iris/"))
back = ray.data.read_parquet(f"{d}/iris")
assert back.count() == 150 and "petal area (cm^2)" in back.columns()


# Stateful transforms: a callable class on a pool of actors
class Scaler:
    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch["scaled"] = batch["sepal length (cm)"] * self.factor
        return batch


scaled = ds.map_batches(Scaler, fn_constructor_kwargs={"factor": 2.0}, concurrency=2)
assert np.allclose(scaled.to_pandas()["scaled"], ds.to_pandas()["sepal length (cm)"] * 2)

# Aggregating and shuffling
print(ds.groupby("target").mean("petal length (cm)").take_all())
train, test = ds.train_test_split(test_size=0.25, shuffle=True, seed=42)
assert train.count() + test.count() == 150
print(ds.random_shuffle(seed=1).take(2))
print("OK quickstart", flush=True)
