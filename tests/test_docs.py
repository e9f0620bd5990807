"""The documents in the repository stand on their own and match the code they describe.

* no file in the repository points outside it (a user has only the repository);
* every relative link of the README and of docs/ names a file that exists;
* docs/output-contract.md lists exactly the fields a finding and the findings table have.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from engine.compare import Finding
from engine.result import CheckResult

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"build", "dist", "__pycache__", "node_modules"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".json", ".j2", ".txt", ".cfg", ""}


def _repo_text_files() -> list[Path]:
    out = []
    for p in REPO.rglob("*"):
        rel = p.relative_to(REPO).parts
        if any(part.startswith(".") and part not in (".ci",) for part in rel):
            continue  # .git, virtual environments, caches
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel):
            continue
        if rel[:2] == ("benchmarks", "data"):
            continue
        if p.is_file() and p.suffix in TEXT_SUFFIXES:
            out.append(p)
    return out


def test_nothing_points_outside_the_repository():
    bad = []
    for p in _repo_text_files():
        if p == Path(__file__):
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"\.\./shared/|/work/shared|shared/DESIGN", text):
            line = text.count("\n", 0, m.start()) + 1
            bad.append(f"{p.relative_to(REPO)}:{line}")
    assert not bad, "references to files outside the repository: " + ", ".join(bad)


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_exist(doc):
    text = doc.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"


def test_readme_links_the_design_and_the_contract():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "](docs/design.md)" in text and "](docs/output-contract.md)" in text


def _table_fields(section: str) -> set[str]:
    """The backticked names in the first column of the table under ``### section``."""
    text = (REPO / "docs" / "output-contract.md").read_text(encoding="utf-8")
    body = re.search(rf"^### {re.escape(section)}\n(.*?)(?=^#)", text, re.S | re.M)
    assert body, f"no '### {section}' section in docs/output-contract.md"
    names: set[str] = set()
    for row in re.findall(r"^\| ([^|]+) \|", body.group(1), re.M):
        names.update(re.findall(r"`([a-z_]+)`", row))
    return names


def test_contract_lists_every_finding_field():
    documented = _table_fields("Findings")
    actual = {f.name for f in dataclasses.fields(Finding)}
    assert documented == actual, (
        f"undocumented: {sorted(actual - documented)}; documented but absent: {sorted(documented - actual)}"
    )


def test_contract_lists_every_findings_table_column():
    text = (REPO / "docs" / "output-contract.md").read_text(encoding="utf-8")
    section = re.search(r"^## Findings table.*?\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    documented = re.findall(r"`([a-z_]+)`", section)
    actual = CheckResult("ok", [], {}, {}).findings_table().schema.names
    assert documented == actual
