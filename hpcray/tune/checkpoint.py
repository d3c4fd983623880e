"""Checkpoints: a directory of files (Ray's ``Checkpoint``), plus a dict shortcut."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator

_DICT_FILE = "checkpoint.pkl"


class Checkpoint:
    """A directory holding a trial's state. Trials read it on whichever rank they run on, so
    the experiment's storage_path must be on a file system every rank sees."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._temporary = False  # made by from_dict: moved, not copied, when reported

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> Checkpoint:
        return cls(path)

    @classmethod
    def from_dict(cls, data: dict) -> Checkpoint:
        """Pickles data into a fresh temporary directory."""
        path = tempfile.mkdtemp(prefix="hpcray-ckpt-")
        with open(os.path.join(path, _DICT_FILE), "wb") as f:
            pickle.dump(data, f)
        checkpoint = cls(path)
        checkpoint._temporary = True
        return checkpoint

    def to_dict(self) -> dict:
        with open(os.path.join(self.path, _DICT_FILE), "rb") as f:
            return pickle.load(f)

    def to_directory(self, path: str | os.PathLike | None = None) -> str:
        """Copies the checkpoint's files to path (a new temporary directory by default)."""
        target = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="hpcray-ckpt-")
        shutil.copytree(self.path, target, dirs_exist_ok=True)
        return target

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """The checkpoint's directory, to read in place."""
        yield self.path

    def __reduce__(self):
        return (Checkpoint, (self.path,))

    def __eq__(self, other) -> bool:
        return isinstance(other, Checkpoint) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r})"


def persist(checkpoint: Checkpoint, target: str) -> str:
    """Copies a reported checkpoint's directory to target, atomically (the source stays the
    user's), or moves it there when from_dict made it."""
    source = checkpoint.path
    if os.path.abspath(source) == os.path.abspath(target):
        return target
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if checkpoint._temporary:
        shutil.move(source, tmp)
        checkpoint.path = target
    else:
        shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
