"""The import graph of hpcray/ follows its layers, including imports inside functions.

Lowest first: exceptions and plain data types; the transport; core (runtime, head, worker,
objects, protocol, scheduler, serialization); device; job (start-up, launch, Slurm); the
public API; hpcray.collective; the libraries (train, tune, serve, rllib, data), which use
only the public API. A module imports only from its own layer or lower ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["base", "transport", "core", "device", "job", "api", "collective", "libraries"]
BASE = {"hpcray.exceptions", "hpcray.util.scheduling_strategies"}
LIBRARIES = ("train", "tune", "serve", "rllib", "data")


def layer(module: str) -> str:
    parts = module.split(".")
    if module in BASE:
        return "base"
    if parts[:2] == ["hpcray", "_private"] and len(parts) > 2:
        return parts[2] if parts[2] in LAYERS else "core"
    if parts[:2] in (["hpcray", "object_ref"],):
        return "core"
    if len(parts) > 1 and parts[1] == "collective":
        return "collective"
    if len(parts) > 1 and parts[1] in LIBRARIES:
        return "libraries"
    return "api"


def modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "hpcray").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import in the file, resolved to absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target, [a.name for a in node.names]))
    return out


def edges() -> list[tuple[str, int, str]]:
    """(importer, line, imported module) within hpcray; ``from pkg import mod`` counts as
    importing pkg.mod."""
    known = modules()
    result = []
    for name, path in known.items():
        for line, target, names in imports(name, path):
            if not target.startswith("hpcray"):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            for module in subs or [target]:
                result.append((name, line, module))
    return result


def test_no_module_imports_a_higher_layer() -> None:
    bad = [f"{src}:{line} imports {dst} ({layer(src)} -> {layer(dst)})"
           for src, line, dst in edges()
           if LAYERS.index(layer(dst)) > LAYERS.index(layer(src))]
    assert not bad, "\n".join(bad)


def test_libraries_use_only_the_public_api() -> None:
    bad = []
    for src, line, dst in edges():
        if layer(src) == "libraries" and (dst.startswith("hpcray._private")
                                          or dst == "hpcray.object_ref"):
            bad.append(f"{src}:{line} imports {dst}")
    for name, path in modules().items():
        if layer(name) != "libraries":
            continue
        for line, target, names in imports(name, path):
            private = [n for n in names if n.startswith("_")]
            if target.startswith("hpcray") and private and layer(target) != "libraries":
                bad.append(f"{name}:{line} imports {private} from {target}")
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "api" and node.attr.startswith("_")):
                bad.append(f"{name}:{node.lineno} uses api.{node.attr}")
    assert not bad, "\n".join(bad)


def test_the_check_sees_the_layers() -> None:
    """The checks above would fail on a violation: the graph has edges of every kind."""
    seen = {(layer(s), layer(d)) for s, _, d in edges()}
    for pair in [("job", "core"), ("device", "core"), ("api", "job"), ("libraries", "api"),
                 ("collective", "api")]:
        assert pair in seen, pair
    assert layer("hpcray._private.core.head") == "core"
    assert layer("hpcray.train.trainer") == "libraries"
    with pytest.raises(AssertionError):
        assert LAYERS.index(layer("hpcray._private.job.bootstrap")) <= LAYERS.index("core")
