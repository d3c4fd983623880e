"""The documentation stays true to the code: every HPCRAY_* variable documented, the
configuration reference regenerated, links that resolve, nothing cited from outside."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from hpcray._private.core.config import ELSEWHERE, Config, reference

ROOT = Path(__file__).resolve().parents[2]


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return [ROOT / p for p in out if (ROOT / p).is_file()]


def test_every_variable_the_code_reads_is_documented() -> None:
    known = {f"HPCRAY_{name.upper()}" for name in Config.__dataclass_fields__} | set(ELSEWHERE)
    used = set()
    for path in (ROOT / "hpcray").rglob("*.py"):
        used |= set(re.findall(r"HPCRAY_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text()))
    used.discard("HPCRAY_X")  # the docstring's placeholder
    assert used <= known, f"undocumented: {sorted(used - known)}"


def test_configuration_reference_is_current() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == reference(), (
        "regenerate docs/configuration.md (see its first paragraph)")


def test_links_resolve_and_nothing_cites_outside_the_repository() -> None:
    bad = []
    for path in tracked("*.md"):
        text = path.read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not (path.parent / target).exists():
                bad.append(f"{path.relative_to(ROOT)}: broken link {target}")
    for path in tracked("*.md", "*.py", "*.sh", "*.sbatch", ".ci/run"):
        if path.name == "test_docs.py":
            continue
        if re.search(r"shared/(FACTS|STYLE)\.md|/work/\.library", path.read_text()):
            bad.append(f"{path.relative_to(ROOT)} cites a file outside the repository")
    assert not bad, "\n".join(bad)


def test_readme_is_short_and_gives_the_test_command_of_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd ", "export "))]
    assert ci[-1].strip() in readme
