"""The folders are the architecture: which folder may import which (docs/DESIGN.md, "Layers"), checked on every import.

Imports inside functions count too: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

import pytest

from ..conftest import ROOT

# Each layer and the project layers it may import (itself always). Anything not listed is forbidden.
API = {"api.release", "api.model", "api"}
MODELS = {"families", "features"}  # the model families and the team's feature code
ALLOWED = {
    "gates": set(),  # pure gate logic: imports nothing else of the project
    "features": set(),  # the team's feature code: plain transformers, nothing of the project
    "families": {"features"},  # the model families: their allow-list admits the team's feature classes
    "api.release": {"families", "features"},  # what the pipeline writes and the API reads, and what it may load
    "api.model": {"api.release", "families"},  # the request path
    "api": {"api.release", "api.model", "families"},  # the HTTP face (app, settings, source, limits, metrics)
    "pipeline.core": {"gates", *MODELS, *API},  # pure: no MLflow, no subprocess
    "pipeline.ci": {"pipeline.core", "api.release"},
    "pipeline.store": {"pipeline.core", "pipeline.ci", "gates", *MODELS, *API},
    "pipeline.runtime": {"pipeline.core", "pipeline.ci", "gates", *MODELS, *API},
    # Batch scoring, a wing of its own: the engines, readers, writers and checks. The score stage hands it the
    # loaded model, the MLflow client and the settings it read, so the wing imports neither the adapters
    # (pipeline.store) nor the stages, and reads no environment (test below); only the stages and the CLI import it.
    "pipeline.scoring": {"pipeline.core", "pipeline.ci", "pipeline.runtime", *MODELS, *API},
    "pipeline.stages": {
        "pipeline.core",
        "pipeline.ci",
        "pipeline.store",
        "pipeline.runtime",
        "pipeline.scoring",
        "gates",
        *MODELS,
        *API,
    },
    "pipeline": {
        "pipeline.core",
        "pipeline.ci",
        "pipeline.store",
        "pipeline.runtime",
        "pipeline.scoring",
        "pipeline.stages",
        "gates",
        *MODELS,
        *API,
    },
}
# Third-party modules a layer must not touch: pure code reads no registry and starts no process.
FORBIDDEN_LIBRARIES = {"pipeline.core": {"mlflow", "subprocess"}, "gates": {"mlflow", "subprocess", "sklearn"}}
PACKAGES = ("gates", "api", "pipeline", "families", "features")


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


def test_the_scoring_wing_reads_no_environment():
    # the score stage (pipeline/stages/scoring.py) reads SCORE_MAX_* and hands the values down
    readers = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "pipeline" / "scoring").rglob("*.py"))
        for line, text in enumerate(path.read_text().splitlines(), 1)
        if "os.environ" in text or "getenv" in text
    ]
    assert readers == []


@pytest.mark.parametrize(
    ("module", "line", "layer"),
    [
        ("gates/evaluate.py", "from api.release import contract", "gates"),
        ("features/churn.py", "from families import FAMILIES", "features"),
        ("families/xgboost_trees.py", "from api.release.safe_model import RefusedModel", "families"),
        ("api/app.py", "import pipeline.core.config", "api"),
        ("api/release/verdicts.py", "from api.model.schema import FeatureSpec", "api.release"),
        ("pipeline/core/data.py", "from pipeline.store import registry", "pipeline.core"),
        ("pipeline/core/train.py", "import mlflow", "pipeline.core"),
        ("pipeline/store/connection.py", "from pipeline.stages.release import promote_stage", "pipeline.store"),
        ("pipeline/scoring/batch_scorer.py", "from pipeline.store import registry", "pipeline.scoring"),
        ("pipeline/runtime/kubernetes.py", "from pipeline.scoring import byte_caps", "pipeline.runtime"),
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
