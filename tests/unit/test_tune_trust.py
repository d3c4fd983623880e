"""Tune never unpickles from an experiment folder or file another user owns or may change."""

from __future__ import annotations

import os

import pytest

from hpcray.tune.storage import ExperimentStorage


def _saved(tmp_path) -> ExperimentStorage:
    storage = ExperimentStorage(str(tmp_path / "exp"))
    storage.write_pickle("tuner.pkl", {"x": 1})
    storage.flush()
    return storage


def test_own_folder_reads(tmp_path) -> None:
    assert _saved(tmp_path).read_pickle("tuner.pkl") == {"x": 1}


def test_world_writable_is_refused(tmp_path) -> None:
    storage = _saved(tmp_path)
    os.chmod(os.path.join(storage.path, "tuner.pkl"), 0o666)
    with pytest.raises(PermissionError, match="writable by every user"):
        storage.read_pickle("tuner.pkl")


@pytest.mark.skipif(os.getuid() != 0, reason="planting a file of another uid needs root")
def test_another_users_file_is_refused(tmp_path) -> None:
    storage = _saved(tmp_path)
    os.chown(os.path.join(storage.path, "tuner.pkl"), 65534, 65534)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        storage.read_pickle("tuner.pkl")
