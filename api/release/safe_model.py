"""Load a model version without running code from its artifact.

A version's model directory is read as data: the MLmodel file with
yaml.safe_load, the estimator with skops against an allow-list of the types
this project builds. Pickle and cloudpickle formats, `code` paths and any type
outside the list are refused before anything is constructed.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Every type a model built from params.yaml contains (logistic regression,
# random forest, histogram gradient boosting behind the ColumnTransformer of
# pipeline/train.py), plus the plain containers and numpy scalars skops writes.
# tests/unit/test_safe_model.py trains each buildable model and checks this list
# covers it, so a scikit-learn upgrade that adds an internal type is caught there.
ALLOWED_TYPES = frozenset(
    {
        "builtins.bool",
        "builtins.dict",
        "builtins.float",
        "builtins.int",
        "builtins.list",
        "builtins.slice",
        "builtins.str",
        "builtins.tuple",
        "numpy.bool_",
        "numpy.dtype",
        "numpy.float32",
        "numpy.float64",
        "numpy.int32",
        "numpy.int64",
        "numpy.ndarray",
        "numpy.random._generator.Generator",
        "numpy.random._pcg64.PCG64",
        "numpy.random.mtrand.RandomState",
        "numpy.uint64",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn.compose._column_transformer.ColumnTransformer",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._encoders.OneHotEncoder",
        "sklearn.preprocessing._label.LabelEncoder",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._tree.Tree",
    }
)
SKOPS_FORMAT = "skops"
MLMODEL = "MLmodel"


class RefusedModel(Exception):
    """The artifact is not something this project will load (format, code, types, files)."""


def model_file(model_dir: Path) -> Path:
    """The serialized estimator named by MLmodel, after refusing anything but plain skops."""
    try:
        meta = yaml.safe_load((model_dir / MLMODEL).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RefusedModel(f"cannot read {MLMODEL}: {exc}") from None
    flavors = (meta or {}).get("flavors") or {}
    sklearn_flavor = flavors.get("sklearn")
    if not isinstance(sklearn_flavor, dict):
        raise RefusedModel(f"not a scikit-learn model (flavors: {sorted(flavors)})")
    fmt = sklearn_flavor.get("serialization_format", "pickle")
    if fmt != SKOPS_FORMAT:
        raise RefusedModel(f"serialization format {fmt!r} can run code when loaded; only skops is loaded")
    for name, flavor in flavors.items():
        if isinstance(flavor, dict) and flavor.get("code"):
            raise RefusedModel(
                f"flavor {name!r} ships a code path ({flavor['code']!r}); code from artifacts never runs"
            )
    pyfunc = flavors.get("python_function") or {}
    if pyfunc.get("loader_module", "mlflow.sklearn") != "mlflow.sklearn":
        raise RefusedModel(f"python_function loader {pyfunc.get('loader_module')!r} is not mlflow.sklearn")
    name = str(sklearn_flavor.get("pickled_model", ""))
    path = (model_dir / name).resolve()
    if not name or path.parent != model_dir.resolve() or not path.is_file():
        raise RefusedModel(f"model file {name!r} is not a file in the model directory")
    return path


def types_in(data: bytes) -> set[str]:
    """Every `module.Class` a skops file would construct, read from its schema without loading it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise RefusedModel(f"not a skops file: {exc}") from None
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__module__" in node and "__class__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def load_estimator(model_dir: Path) -> Any:
    """The fitted Pipeline of a model directory, loaded by skops with the allow-list."""
    return load_estimator_bytes(model_file(model_dir).read_bytes())


def load_estimator_bytes(data: bytes) -> Any:
    """The fitted Pipeline in a skops file's bytes, loaded with the allow-list."""
    import skops.io  # slow to import; only loading needs it

    unknown = types_in(data) - ALLOWED_TYPES
    if unknown:
        raise RefusedModel(f"types outside the allow-list: {', '.join(sorted(unknown))}")
    try:
        estimator = skops.io.loads(data, trusted=sorted(ALLOWED_TYPES))
    except Exception as exc:  # skops raises its own errors for a damaged or hostile file
        raise RefusedModel(f"skops cannot load the model: {_first_line(exc)}") from None
    if type(estimator).__module__ + "." + type(estimator).__name__ != "sklearn.pipeline.Pipeline":
        raise RefusedModel(f"expected a sklearn Pipeline, got {type(estimator).__name__}")
    return estimator


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "the file is damaged"


@dataclass(frozen=True)
class ArtifactBytes:
    """What the API loads of a version, read once: the digest and the load use the same bytes."""

    files: dict[str, bytes]  # MLmodel, the estimator file, feature_schema.json
    model_name: str  # which of `files` is the estimator

    @property
    def model_bytes(self) -> bytes:
        """The estimator file's bytes."""
        return self.files[self.model_name]

    @property
    def digest(self) -> str:
        """sha256 over each file's sha256 with its name, sorted (docs/DESIGN.md)."""
        outer = hashlib.sha256()
        for name in sorted(self.files):
            outer.update(f"{name}\0{hashlib.sha256(self.files[name]).hexdigest()}\n".encode())
        return "sha256:" + outer.hexdigest()


def read_artifact(model_dir: Path, feature_schema: Path) -> ArtifactBytes:
    """MLmodel, the estimator file and the run's feature schema, as bytes.

    Files MLflow adds at registration (registered_model_meta) are not part of it,
    so the digest of a run's logged model equals that of its registered version.
    """
    estimator = model_file(model_dir)
    paths = {MLMODEL: model_dir / MLMODEL, "feature_schema.json": feature_schema, estimator.name: estimator}
    return ArtifactBytes({name: path.read_bytes() for name, path in paths.items()}, estimator.name)


def artifact_digest(model_dir: Path, feature_schema: Path) -> str:
    """sha256 over what the API loads: MLmodel, the estimator file and the run's feature schema."""
    return read_artifact(model_dir, feature_schema).digest
