"""The state directory cannot be planted by another user (it feeds checkpoints and pickles
back into the job)."""

from __future__ import annotations

import os
import stat

import pytest

from hpcray._private.job.slurm import private_dir


def test_made_private(tmp_path) -> None:
    path = str(tmp_path / "a" / "hpcray-7")
    assert private_dir(path) == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert private_dir(path) == path  # again: it is ours


def test_writable_by_others_is_refused(tmp_path) -> None:
    path = tmp_path / "hpcray-7"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by others.*HPCRAY_STATE_DIR"):
        private_dir(str(path))


def test_symlink_is_refused(tmp_path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "hpcray-7").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match="not a directory"):
        private_dir(str(tmp_path / "hpcray-7"))


@pytest.mark.skipif(os.getuid() != 0, reason="planting a directory of another uid needs root")
def test_another_users_directory_is_refused(tmp_path) -> None:
    """As another user would: a predictable /tmp-style path created first, owned by them."""
    tmp_path.chmod(0o1777)
    planted = tmp_path / "hpcray-1234"
    planted.mkdir(mode=0o700)
    os.chown(planted, 65534, 65534)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        private_dir(str(planted))
