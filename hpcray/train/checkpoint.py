"""Checkpoints: directories, written atomically into the run directory and rotated."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .config import CheckpointConfig


class Checkpoint:
    """A directory of files a training loop saved (Ray's ``Checkpoint``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> Checkpoint:
        """The checkpoint held in an existing directory."""
        if not os.path.isdir(path):
            raise ValueError(f"checkpoint directory {path!r} does not exist")
        return cls(path)

    def to_directory(self, path: str | os.PathLike | None = None) -> str:
        """Copies the checkpoint's files into path (a new temporary directory by default)."""
        path = str(path) if path is not None else tempfile.mkdtemp(prefix="hpcray-checkpoint-")
        shutil.copytree(self.path, path, dirs_exist_ok=True)
        return path

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """The checkpoint's directory, to read in place."""
        yield self.path

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Checkpoint) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


def stage(source: str, staging: str) -> None:
    """Copies a worker's checkpoint files into the staging directory of one report.

    Every worker that reports a checkpoint for the same report adds its files to the same
    directory; the driver publishes it once all workers reported (see CheckpointManager)."""
    os.makedirs(staging, exist_ok=True)
    shutil.copytree(source, staging, dirs_exist_ok=True)


class CheckpointManager:
    """Publishes staged checkpoints atomically (rename) as ``checkpoint_NNNNNN`` under the run
    directory and deletes those CheckpointConfig does not keep."""

    def __init__(self, run_dir: str, config: CheckpointConfig):
        self.run_dir = run_dir
        self.config = config
        self.kept: list[tuple[int, Checkpoint, dict]] = []  # (index, checkpoint, metrics)
        self.count = 0

    @property
    def latest(self) -> Checkpoint | None:
        return self.kept[-1][1] if self.kept else None

    def publish(self, staging: str, metrics: dict) -> Checkpoint:
        """Renames a complete staging directory into place; rotates; returns the checkpoint."""
        self.count += 1
        final = os.path.join(self.run_dir, f"checkpoint_{self.count:06d}")
        if os.path.exists(final):  # left by an earlier run in the same directory
            shutil.rmtree(final)
        os.rename(staging, final)  # atomic: readers see no checkpoint or a whole one
        checkpoint = Checkpoint(final)
        self.kept.append((self.count, checkpoint, dict(metrics)))
        self._rotate()
        return checkpoint

    def _rotate(self) -> None:
        keep_n = self.config.num_to_keep
        if keep_n is None or len(self.kept) <= keep_n:
            return
        attr = self.config.checkpoint_score_attribute
        if attr is None:
            keep = {i for i, _, _ in self.kept[-keep_n:]}
        else:
            sign = 1 if self.config.checkpoint_score_order == "max" else -1
            scored = sorted(self.kept, key=lambda e: _rank_key(e, attr, sign), reverse=True)
            keep = {i for i, _, _ in scored[:keep_n]}
        keep.add(self.kept[-1][0])  # the latest: a restart resumes from it
        for index, checkpoint, _ in [e for e in self.kept if e[0] not in keep]:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
        self.kept = [e for e in self.kept if e[0] in keep]

    def best(self) -> list[tuple[Checkpoint, dict]]:
        """The checkpoints on disk with the metrics reported with them, oldest first."""
        return [(c, m) for _, c, m in self.kept]


def _rank_key(entry: tuple, attr: str, sign: int) -> tuple:
    """Best first when sorted in reverse: scored before unscored, then by score, then newest."""
    value = entry[2].get(attr)
    if not isinstance(value, (int, float)):
        return (0, 0.0, entry[0])
    return (1, sign * float(value), entry[0])


def clean_staging(run_dir: str) -> None:
    """Drops staging directories an earlier attempt left unpublished."""
    staging = Path(run_dir) / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
