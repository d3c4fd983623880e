"""hpcray.data in real MPI jobs: every operator and format against numpy/pandas references,
errors, trainer shards, bounded memory, and the examples."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_process

JOBS = ROOT / "tests" / "jobs" / "data"
NEED = ("pyarrow", "pandas", "h5py")
pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEED),
                                reason="needs the data extra (pyarrow, pandas) and h5py")


def launch(script: str, n: int, tmp_path: Path, *args: str, timeout: float = 150):
    from conftest import mpiexec

    from hpcray._private.job.launch import mpiexec_command

    argv = [sys.executable, str(JOBS / script), *args]
    cmd, env = mpiexec_command(n, argv, mpiexec=mpiexec())
    return run_process(cmd, timeout, env=env, cwd=str(tmp_path))


def job(script: str, n: int, tmp_path: Path, *args: str, timeout: float = 150) -> str:
    proc = launch(script, n, tmp_path, *args, timeout=timeout)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout


def oks(out: str) -> list[str]:
    return [line[3:] for line in out.splitlines() if line.startswith("OK ")]


def test_every_operator_matches_numpy_and_pandas(tmp_path: Path) -> None:
    out = job("ops.py", 3, tmp_path, "11")
    assert len(oks(out)) == 14, out


def test_every_format_reads_and_writes(tmp_path: Path) -> None:
    out = job("io.py", 3, tmp_path, str(tmp_path))
    assert len(oks(out)) == 7, out


def test_errors_name_operator_file_and_rows(tmp_path: Path) -> None:
    out = job("errors.py", 3, tmp_path, str(tmp_path))
    assert len(oks(out)) == 4, out


def test_trainer_workers_stream_equal_disjoint_shards(tmp_path: Path) -> None:
    out = job("train.py", 4, tmp_path, str(tmp_path))
    assert oks(out) == ["train shards"], out


def test_training_resumes_mid_epoch_from_a_checkpoint_on_fewer_workers(tmp_path: Path) -> None:
    out = job("train_resume.py", 4, tmp_path, str(tmp_path))
    assert oks(out) == ["train resume"], out


def test_shard_resumes_mid_epoch_on_a_different_number_of_consumers(tmp_path: Path) -> None:
    out = job("resume.py", 3, tmp_path)
    assert oks(out) == ["resume"], out


def test_memory_stays_flat_when_the_dataset_is_far_bigger_than_the_budget(tmp_path: Path
                                                                            ) -> None:
    out = job("backpressure.py", 3, tmp_path, timeout=200)
    assert oks(out) == ["backpressure"], out


def test_ray_data_quickstart_runs_by_changing_its_import(tmp_path: Path) -> None:
    proc = run_process([sys.executable, str(JOBS / "quickstart.py"), str(tmp_path)], 150,
                       cwd=str(tmp_path))
    assert proc.returncode == 0 and "OK quickstart" in proc.stdout, proc.stderr


@pytest.mark.parametrize("example", ["data_batch_inference.py", "data_hdf5_pipeline.py"])
def test_examples_run(tmp_path: Path, example: str) -> None:
    if example == "data_hdf5_pipeline.py" and importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch")
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("needs scikit-learn")
    proc = run_process([sys.executable, str(ROOT / "examples" / example)], 200,
                       cwd=str(tmp_path))
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def test_shard_positions_travel_in_checkpoints_by_themselves(tmp_path: Path) -> None:
    out = job("train_autoresume.py", 4, tmp_path, str(tmp_path))
    assert oks(out) == ["train autoresume"], out


def test_udfs_are_retried_after_errors_and_rank_deaths(tmp_path: Path) -> None:
    proc = launch("retries.py", 3, tmp_path, str(tmp_path))
    # the UDF's process died on purpose (an executor: its rank lives on, the job ends well)
    assert len(oks(proc.stdout)) == 5, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0 and "died during the job" not in proc.stderr, proc.stderr
