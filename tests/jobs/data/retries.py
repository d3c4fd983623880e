"""UDF retries: a map_batches or map UDF that raises on its first attempt runs again when
ray_remote_args allow it (retry_exceptions, max_retries), and so does a callable class on an
actor pool (DataContext.actor_task_retry_on_errors); a task whose rank dies runs again on a
live rank. Every output is checked against numpy, and the markers show that each failure
happened."""

import os
import sys

import numpy as np

import hpcray
import hpcray.data as rd
from hpcray.data import UserCodeException

hpcray.init()
d = sys.argv[1]
N = 2000


def ok(name: str) -> None:
    print("OK", name, flush=True)


def first_attempt_fails(tag: str, key: int, exc: type = ConnectionError) -> None:
    """Raises exc the first time (tag, key) is seen, leaving a marker file."""
    marker = os.path.join(d, f"{tag}_{key}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise exc(f"transient failure of {tag} {key}")


def flaky_double(batch: dict) -> dict:
    first_attempt_fails("batches", int(batch["id"][0]))
    return {"id": batch["id"], "y": batch["id"] * 2}


def markers(tag: str) -> int:
    return len([f for f in os.listdir(d) if f.startswith(tag + "_")])


ds = rd.range(N, override_num_blocks=5).map_batches(
    flaky_double, retry_exceptions=[ConnectionError], max_retries=2)
got = ds.to_pandas()
assert (got["id"].to_numpy() == np.arange(N)).all() and (got["y"] == 2 * got["id"]).all()
assert markers("batches") == 5  # every block failed once and was retried
ok("map_batches retried on a listed exception")

try:  # the same failure without retry_exceptions fails the dataset, naming the operator
    rd.range(N, override_num_blocks=5).map_batches(
        lambda b: first_attempt_fails("noretry", int(b["id"][0])) or b).take_all()
    raise AssertionError("no error")
except UserCodeException as exc:
    assert "MapBatches" in str(exc) and "ConnectionError" in str(exc), exc
try:  # an exception not in the list is not retried either
    rd.range(N, override_num_blocks=2).map_batches(
        lambda b: first_attempt_fails("other", int(b["id"][0]), KeyError) or b,
        retry_exceptions=[ConnectionError]).take_all()
    raise AssertionError("no error")
except UserCodeException as exc:
    assert "KeyError" in str(exc), exc
ok("errors outside retry_exceptions fail")


def flaky_row(row: dict) -> dict:
    if row["id"] % 400 == 7:
        first_attempt_fails("rows", int(row["id"]), RuntimeError)
    return {"id": row["id"], "sq": row["id"] ** 2}


got = rd.range(N, override_num_blocks=4).map(flaky_row, retry_exceptions=True).to_pandas()
assert (got["sq"] == got["id"] ** 2).all() and sorted(got["id"]) == list(range(N))
assert markers("rows") == 5
ok("map retried on any exception")


class FlakyModel:
    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, batch: dict) -> dict:
        first_attempt_fails("actor", int(batch["id"][0]), TimeoutError)
        return {"id": batch["id"], "p": batch["id"] * self.scale}


rd.DataContext.get_current().actor_task_retry_on_errors = [TimeoutError]
got = rd.range(N, override_num_blocks=4).map_batches(
    FlakyModel, fn_constructor_args=(0.5,), concurrency=2).to_pandas()
rd.DataContext.get_current().actor_task_retry_on_errors = False
assert np.allclose(got["p"], got["id"] * 0.5) and sorted(got["id"]) == list(range(N))
assert markers("actor") == 4
ok("actor pool calls retried")


def dies_once(batch: dict) -> dict:
    marker = os.path.join(d, "died")
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # its process dies in the middle of the task
    return {"id": batch["id"], "neg": -batch["id"]}


# last in the job: the rank that dies is gone for good (the job then exits non-zero)
got = rd.range(N, override_num_blocks=1).map_batches(dies_once, max_retries=1).to_pandas()
assert (got["neg"] == -got["id"]).all() and sorted(got["id"]) == list(range(N))
assert os.path.exists(os.path.join(d, "died"))
ok("a task whose process died ran again")
hpcray.shutdown()
