"""Save and load (nested) dicts of numpy arrays in one HDF5 file (needs h5py)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def _host(value: Any) -> np.ndarray:
    if type(value).__module__.split(".")[0] == "cupy":
        return value.get()
    if type(value).__module__.startswith("torch"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def save_arrays(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    """Writes arrays (numpy, CuPy or torch; dicts become HDF5 groups) to path, atomically."""
    import h5py

    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"

    def write(group, values: dict) -> None:
        for key, value in values.items():
            if not isinstance(key, str) or "/" in key:
                raise ValueError(f"array names must be strings without '/', got {key!r}")
            if isinstance(value, dict):
                write(group.create_group(key), value)
            else:
                group.create_dataset(key, data=_host(value))

    with h5py.File(tmp, "w") as f:
        write(f, arrays)
    os.replace(tmp, path)


def load_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """Reads what save_arrays wrote: a dict of numpy arrays (nested for groups)."""
    import h5py

    def read(group) -> dict:
        return {k: read(v) if isinstance(v, h5py.Group) else v[()] for k, v in group.items()}

    with h5py.File(os.fspath(path), "r") as f:
        return read(f)
