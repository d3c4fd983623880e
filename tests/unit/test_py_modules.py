"""runtime_env py_modules, in-process: what becomes importable, and what is refused."""

from __future__ import annotations

import importlib
import sys
import types

import pytest

from hpcray._private.core import py_modules


def _make(tmp_path):
    pkg = tmp_path / "mods" / "unitpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 'pkg'\n")
    (pkg / "sub.py").write_text("VALUE = 'sub'\n")
    (tmp_path / "mods" / "unitsingle.py").write_text("VALUE = 'single'\n")
    (tmp_path / "mods" / "unitsibling.py").write_text("VALUE = 'sibling'\n")
    return pkg, tmp_path / "mods" / "unitsingle.py"


def test_entries_import_by_their_names_then_not(tmp_path) -> None:
    pkg, single = _make(tmp_path)
    paths = py_modules.resolve([pkg, str(single)], "task f")
    undo = py_modules.apply(paths)
    try:
        assert importlib.import_module("unitpkg").VALUE == "pkg"
        assert importlib.import_module("unitpkg.sub").VALUE == "sub"
        assert importlib.import_module("unitsingle").VALUE == "single"
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("unitsibling")  # next to an entry, not one itself
        assert py_modules.apply(paths)() is None  # entering again changes nothing
        assert "unitpkg" in sys.modules
    finally:
        undo()
    assert not any(k.startswith(("unitpkg", "unitsingle")) for k in sys.modules)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("unitpkg")


def test_a_module_object_and_what_is_refused(tmp_path) -> None:
    pkg, _ = _make(tmp_path)
    module = types.ModuleType("unitpkg")
    module.__path__ = [str(pkg)]
    assert py_modules.resolve([module], "f") == [str(pkg)]
    for bad in ([str(tmp_path / "nothere")], ["s3://bucket/m.zip"], [str(tmp_path / "x.whl")]):
        with pytest.raises(ValueError):
            py_modules.resolve(bad, "f")
    for bad in (str(pkg), [3]):
        with pytest.raises(TypeError):
            py_modules.resolve(bad, "f")
