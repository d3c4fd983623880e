"""runtime_env ``py_modules``: local packages and modules importable in a task or actor.

Ray uploads each entry and puts it on the worker's PYTHONPATH, so the directory ``/x/pkg``
is imported as ``pkg`` and the file ``/x/mod.py`` as ``mod``. On an HPC cluster every node
reads the same file system, so nothing moves: the executor running the task imports each
entry's top-level name from where it lies, and from nowhere else (the entry's siblings do
not become importable), for the task's call only (an actor: its whole life).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path


def resolve(entries: object, what: str) -> list[str]:
    """The entries (paths, ``pathlib.Path``s or imported modules) as absolute paths of a
    directory or a ``.py`` file that exists here; TypeError or ValueError saying what to do."""
    if not isinstance(entries, list):
        raise TypeError(f"runtime_env['py_modules'] of {what} must be a list of paths or "
                        f"imported modules, got {type(entries).__name__}")
    paths = []
    for entry in entries:
        if isinstance(entry, types.ModuleType):
            where = list(getattr(entry, "__path__", []) or [])
            if len(where) > 1:
                raise ValueError(f"runtime_env['py_modules'] of {what}: module "
                                 f"{entry.__name__} spans several directories {where}; give "
                                 "the one to use as a path")
            path = where[0] if where else getattr(entry, "__file__", None)
            if not path:
                raise ValueError(f"runtime_env['py_modules'] of {what}: module "
                                 f"{entry.__name__} has no file to import it from")
        elif isinstance(entry, (str, Path)):
            path = str(entry)
        else:
            raise TypeError(f"runtime_env['py_modules'] of {what} takes paths or imported "
                            f"modules, got {type(entry).__name__}")
        if "://" in path:
            raise ValueError(f"runtime_env['py_modules'] of {what}: {path!r} is a URI; hpcray "
                             "fetches nothing: give a path on a file system every rank reads")
        path = os.path.abspath(path)
        if os.path.isdir(path) or (path.endswith(".py") and os.path.isfile(path)):
            paths.append(path)
        elif path.endswith(".whl"):
            raise ValueError(f"runtime_env['py_modules'] of {what}: install the wheel {path} "
                             "in the job's environment (pip install), which every rank shares")
        else:
            raise ValueError(f"runtime_env['py_modules'] of {what}: {path} is not a directory "
                             "or a .py file here; give a path every rank reads (a shared file "
                             "system)")
    return paths


def top_name(path: str) -> tuple[str, str]:
    """(the name an entry is imported by, the directory it is found in)."""
    name = os.path.basename(path.rstrip(os.sep))
    return (name.removesuffix(".py")), os.path.dirname(path.rstrip(os.sep))


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the py_modules' top-level names, each in its own directory only."""

    def __init__(self) -> None:
        self.roots: dict[str, str] = {}

    def find_spec(self, fullname, path, target=None):
        root = self.roots.get(fullname) if path is None else None
        if root is None:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [root])


_finder = _Finder()


def _installed(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def apply(paths: list[str]) -> Callable[[], None]:
    """Makes the entries importable here (modules of the same names imported before are set
    aside, as a fresh worker would not have them); returns what undoes it."""
    added = {}
    for path in paths:
        name, root = top_name(path)
        if _finder.roots.get(name) != root:
            added[name] = (root, _finder.roots.get(name))
            _finder.roots[name] = root
    if not added:
        return lambda: None
    if _finder not in sys.meta_path:
        finder = importlib.machinery.PathFinder  # as PYTHONPATH: after built-in modules
        sys.meta_path.insert(sys.meta_path.index(finder) if finder in sys.meta_path else 0,
                             _finder)
    aside = {key: sys.modules.pop(key) for key in list(sys.modules)
             if any(_installed(key, name) for name in added)}

    def undo() -> None:
        for key in [k for k in sys.modules if any(_installed(k, name) for name in added)]:
            del sys.modules[key]
        sys.modules.update(aside)
        for name, (_, before) in added.items():
            if before is None:
                _finder.roots.pop(name, None)
            else:
                _finder.roots[name] = before

    return undo
