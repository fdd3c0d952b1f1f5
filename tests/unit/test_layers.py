"""The folders are the architecture: which folder may import which (docs/DESIGN.md, "Layers"), checked on every import.

Imports inside functions count too: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

import pytest

from ..conftest import ROOT

# Each layer and the project layers it may import (itself always). Anything not listed is forbidden.
API = {"api.release", "api.model", "api"}
ALLOWED = {
    "gates": set(),  # pure gate logic: imports nothing else of the project
    "api.release": set(),  # what the pipeline writes and the API reads: usable on its own
    "api.model": {"api.release"},  # the request path
    "api": {"api.release", "api.model"},  # the HTTP face (app, settings, source, limits, metrics)
    "pipeline.core": {"gates", *API},  # pure: no MLflow, no subprocess
    "pipeline.ci": {"pipeline.core", "api.release"},
    "pipeline.store": {"pipeline.core", "pipeline.ci", "gates", *API},
    "pipeline.runtime": {"pipeline.core", "pipeline.ci", "gates", *API},
    "pipeline.stages": {"pipeline.core", "pipeline.ci", "pipeline.store", "pipeline.runtime", "gates", *API},
    "pipeline": {
        "pipeline.core",
        "pipeline.ci",
        "pipeline.store",
        "pipeline.runtime",
        "pipeline.stages",
        "gates",
        *API,
    },
}
# Third-party modules a layer must not touch: pure code reads no registry and starts no process.
FORBIDDEN_LIBRARIES = {"pipeline.core": {"mlflow", "subprocess"}, "gates": {"mlflow", "subprocess", "sklearn"}}
PACKAGES = ("gates", "api", "pipeline")


def layer_of(module: str) -> str | None:
    """The most specific layer a module belongs to, or None outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, absolute names, function bodies included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(root: Path) -> list[str]:
    """Every import in the packages under `root` that breaks the rules, as `file:line: layer imports module`."""
    problems = []
    for path in sorted(p for package in PACKAGES for p in (root / package).rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        own = layer_of(module)
        for line, imported in imports_of(path):
            target = layer_of(imported)
            top = imported.split(".")[0]
            where = f"{path.relative_to(root)}:{line}: {own} imports {imported}"
            if top in FORBIDDEN_LIBRARIES.get(own, set()) or (
                target is not None and target != own and target not in ALLOWED[own]
            ):
                problems.append(where)
    return problems


def test_every_import_follows_the_layers():
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    ("module", "line", "layer"),
    [
        ("gates/evaluate.py", "from api.release import contract", "gates"),
        ("api/app.py", "import pipeline.core.config", "api"),
        ("api/release/verdicts.py", "from api.model.schema import FeatureSpec", "api.release"),
        ("pipeline/core/data.py", "from pipeline.store import registry", "pipeline.core"),
        ("pipeline/core/train.py", "import mlflow", "pipeline.core"),
        ("pipeline/store/registry.py", "from pipeline.stages.release import promote_stage", "pipeline.store"),
    ],
)
def test_a_forbidden_import_is_caught(tmp_path, module, line, layer):
    # given: a copy of the packages with one forbidden import added, inside a function
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            copy = tmp_path / path.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text())
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _sneaky():\n    {line}\n")
    # then: the check names the file and what it imported
    [problem] = violations(tmp_path)
    assert problem.startswith(f"{module}:") and f"{layer} imports" in problem
