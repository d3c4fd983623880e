"""hpcray.data's prefetching, datasinks, actor pool sizes and CuPy batches in real MPI jobs."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from test_data import JOBS, NEED, job, oks

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


def test_cupy_batches_on_the_stand_in_cupy(tmp_path: Path) -> None:
    """batch_format="cupy" and device="cuda" over tests/stand_ins' CuPy (no GPU needed)."""
    from conftest import ROOT, mpiexec, run_process

    from hpcray._private.job.launch import mpiexec_command

    argv = [sys.executable, str(JOBS / "cupy_batches.py"), str(tmp_path)]
    cmd, env = mpiexec_command(4, argv, mpiexec=mpiexec())
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'stand_ins'}"
    proc = run_process(cmd, 150, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert len(oks(proc.stdout)) == 2, proc.stdout
