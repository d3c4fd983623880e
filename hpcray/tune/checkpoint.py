"""Checkpoints: a directory of files (Ray's ``Checkpoint``), plus a dict shortcut."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile

from ..train.checkpoint import Checkpoint as TrainCheckpoint

_DICT_FILE = "checkpoint.pkl"


class Checkpoint(TrainCheckpoint):
    """A directory holding a trial's state: hpcray.train's Checkpoint (so trainers and trials
    share one type), plus from_dict/to_dict. Trials read it on whichever rank they run on, so
    the experiment's storage_path must be on a file system every rank sees."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self._temporary = False  # made by from_dict: moved, not copied, when reported

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

    def __reduce__(self):
        return (Checkpoint, (self.path,))


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
