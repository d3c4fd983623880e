"""CuPy batches in-process, on tests/stand_ins' CuPy (host memory behind CuPy's API, refusing
implicit conversion to numpy as CuPy does): batch_format="cupy", device="cuda[:N]", CuPy
results of map_batches back to host blocks, and the errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hpcray.data import DataIterator
from hpcray.data import block as B
from hpcray.data.dataset import _map_batches_apply

STAND_INS = Path(__file__).resolve().parents[1] / "stand_ins"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cupy(monkeypatch):
    """The stand-in imported as ``cupy``; gone from sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(STAND_INS))
    before = set(sys.modules)
    import cupy

    cupy.TRANSFERS.update(to_device=0, to_host=0)
    yield cupy
    for name in set(sys.modules) - before:
        if name == "cupy" or name.startswith(("cupy.", "tests.stand_ins")):
            del sys.modules[name]


class Blocks(DataIterator):
    """An iterator over given blocks (what a dataset or a shard hands iter_batches)."""

    def __init__(self, blocks: list[dict]):
        self.blocks = blocks

    def _blocks(self, prefetch: int) -> Iterator[dict]:
        return iter(self.blocks)


def random_blocks(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out, start = [], 0
    for n in rng.integers(1, 30, 6):
        out.append({"i": np.arange(start, start + n), "x": rng.normal(size=(n, 3))})
        start += n
    return out


@pytest.mark.parametrize("kwargs", [{"batch_format": "cupy"}, {"device": "cuda"},
                                    {"device": "cuda", "batch_format": "numpy"}])
def test_batches_are_cupy_arrays_that_stay_on_the_device(cupy, kwargs) -> None:
    blocks = random_blocks(1)
    want = B.concat(blocks)
    batches = list(Blocks(blocks).iter_batches(batch_size=16, **kwargs))
    assert all(isinstance(v, cupy.ndarray) for b in batches for v in b.values())
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(batches[0]["x"])  # a batch never silently comes back to the host
    assert cupy.TRANSFERS == {"to_device": 2 * len(batches), "to_host": 0}  # one per column
    assert [len(b["i"]) for b in batches[:-1]] == [16] * (len(batches) - 1)
    got = np.concatenate([b["x"].get() for b in batches])
    assert np.array_equal(got, want["x"]) and got.dtype == want["x"].dtype


def test_cuda_n_puts_the_batches_on_gpu_n(cupy) -> None:
    batches = list(Blocks(random_blocks(2)).iter_batches(batch_size=None, device="cuda:1"))
    assert {v.device.id for b in batches for v in b.values()} == {1}
    assert cupy.cuda.Device().id == 0  # the current device is left as it was


def test_map_batches_gives_cupy_batches_and_takes_cupy_results_back_to_host(cupy) -> None:
    block = random_blocks(3)[0]

    def normalize(batch: dict) -> dict:
        assert isinstance(batch["x"], cupy.ndarray)
        return {"i": batch["i"], "x": (batch["x"] - 1.0) * 2.0}

    out = _map_batches_apply(block, normalize, batch_size=4, fmt="cupy", args=(), kwargs={})
    assert isinstance(out["x"], np.ndarray) and isinstance(out["i"], np.ndarray)
    assert np.allclose(out["x"], (block["x"] - 1.0) * 2.0)
    assert np.array_equal(out["i"], block["i"])


def test_object_columns_cannot_go_to_the_gpu(cupy) -> None:
    block = {"s": np.array(["a", "b"], dtype=object), "x": np.zeros(2)}
    with pytest.raises(TypeError, match=r"column\(s\) \['s'\] hold objects.*drop_columns"):
        list(Blocks([block]).iter_batches(batch_format="cupy"))


def test_bad_devices_and_formats_are_named(cupy) -> None:
    it = Blocks(random_blocks(4))
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        it.iter_batches(device="gpu0")
    with pytest.raises(ValueError, match="use batch_format='cupy'"):
        it.iter_batches(device="cuda", batch_format="pandas")
    with pytest.raises(ValueError, match="batch_format must be one of"):
        it.iter_batches(batch_format="torch")


def test_without_cupy_the_error_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(ImportError, match="needs CuPy, which is not installed: pip install"):
        Blocks(random_blocks(5)).iter_batches(batch_format="cupy")
    with pytest.raises(ImportError, match="needs CuPy"):
        Blocks(random_blocks(5)).iter_batches(device="cuda")
    with pytest.raises(ImportError, match="needs CuPy"):
        B.to_batch(random_blocks(5)[0], "cupy")
    batches = list(Blocks(random_blocks(5)).iter_batches(device="cpu"))  # host: no CuPy needed
    assert isinstance(batches[0]["x"], np.ndarray)
