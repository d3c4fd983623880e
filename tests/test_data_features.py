"""hpcray.data's prefetching, datasinks, actor pool sizes and CuPy batches in real MPI jobs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_data import NEED, job, oks

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEED),
                                reason="needs the data extra (pyarrow, pandas) and h5py")


def test_shards_and_datasets_fetch_prefetch_batches_blocks_ahead(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = job("prefetch.py", 4, tmp_path, str(tmp_path))
    assert oks(out) == ["prefetch"], out


def test_a_users_datasink_writes_commits_and_fails_as_in_ray(tmp_path: Path) -> None:
    out = job("datasink.py", 3, tmp_path, str(tmp_path))
    assert len(oks(out)) == 8, out


def test_actor_pools_start_with_initial_size_actors(tmp_path: Path) -> None:
    out = job("actor_pool.py", 3, tmp_path, str(tmp_path))
    assert len(oks(out)) == 3, out
