"""Docs that stay true: every repository path README.md, docs/ or the code's docstrings and comments name exists.

A path is a token that starts with one of the repository's top-level folders (`api/app.py`, `deploy/k8s/`,
`pipeline/stages/gate.py::run`). Globs and templates (`*`, `{`, `<`) are patterns, not paths, and are skipped.
"""

import re
from pathlib import Path

from ..conftest import ROOT

FOLDERS = ("api", "pipeline", "gates", "deploy", "docs", "tests", "benchmarks", "requirements", ".github", ".ci")
# A folder name at a word start (not inside another path or a URL), then path characters.
PATH = re.compile(r"(?<![\w./:-])((?:" + "|".join(re.escape(f) for f in FOLDERS) + r")/[\w./-]*[\w/])")
PATTERN_MARKS = ("*", "{", "<", "$")
# A module as an entry point names it (`api.http_protocol:LimitedHttpToolsProtocol`, `python -m api.x`): a bare
# dotted name is as often a params key (`gates.metrics`) or a variable's attribute, so only these forms count.
PACKAGE = r"((?:api|pipeline|gates)(?:\.\w+)*)"
MODULE = re.compile(rf"(?<![\w./:-]){PACKAGE}:\w|python -m\s+{PACKAGE}")
SOURCES = ("api", "pipeline", "gates", "benchmarks")


def named_paths(text: str) -> set[str]:
    """The repository paths a text names, without a `::symbol` or `:line` suffix and trailing punctuation."""
    found = set()
    for match in PATH.finditer(text):
        end = match.end()
        if end < len(text) and text[end] in PATTERN_MARKS:
            continue
        found.add(match.group(1).rstrip("."))
    return found


def named_modules(text: str) -> set[str]:
    """The dotted module names a text names, each with whatever attribute follows it."""
    return {match.group(1) or match.group(2) for match in MODULE.finditer(text)}


def module_exists(root: Path, dotted: str) -> bool:
    """Whether the dotted name is a module or package of the repository."""
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def documents(root: Path) -> list[Path]:
    """README.md, docs/, the build files, and the product's and benchmarks' Python sources."""
    texts = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    texts += [p for p in (root / "Makefile", root / "Dockerfile") if p.exists()]
    texts += sorted((root / "requirements").glob("*.txt"))
    return texts + sorted(p for folder in SOURCES for p in (root / folder).rglob("*.py"))


def stale_paths(root: Path) -> list[str]:
    """`document: path` for every named path or dotted module that is not in the repository."""
    stale = []
    for document in documents(root):
        text = document.read_text()
        stale += [f"{document.relative_to(root)}: {p}" for p in sorted(named_paths(text)) if not (root / p).exists()]
        stale += [
            f"{document.relative_to(root)}: {m}" for m in sorted(named_modules(text)) if not module_exists(root, m)
        ]
    return stale


def test_every_path_the_docs_and_docstrings_name_exists():
    assert stale_paths(ROOT) == []


def test_a_moved_file_is_caught_and_patterns_are_not_paths(tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "__init__.py").write_text("")
    (tmp_path / "api" / "app.py").write_text(
        '"""Served by api/app.py::create_app; the old api/contract.py is gone."""\n'
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "DESIGN.md").write_text(
        "See `api/app.py`, api/ and tests/unit/test_*.py, deploy/{a,b}, https://x.org/api/nowhere.\n"
        "Moved: pipeline/gate_inputs.py.\n"
    )
    (tmp_path / "README.md").write_text(
        "The API: api/app.py, run as `uvicorn api.app:app` or python -m api; not api.limits:Limits, gates.metrics.\n"
    )
    assert stale_paths(tmp_path) == [
        "README.md: api.limits",
        "docs/DESIGN.md: pipeline/gate_inputs.py",
        "api/app.py: api/contract.py",
    ]
