"""Load a model version without running code from its artifact.

A version's model directory is read as data: the MLmodel file with
yaml.safe_load, the estimator with skops against an allow-list of the types
this project builds (derived from families/ and features/). Pickle and
cloudpickle formats, `code` paths and any type outside the list are refused
before anything is constructed, so no module is imported that the list does
not name.
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

from families import FAMILIES, StructureError, allowed_types

# Every type a version may contain: the shared preprocessing, each declared family's classifier types
# (families/), and the classes of the project's own feature code (features/). Nothing else is constructed.
ALLOWED_TYPES = allowed_types()
OWN_PACKAGES = ("features", "families")
SKOPS_FORMAT = "skops"
# Which family's check_stored reads which stored type (an XGBoost or LightGBM Booster), before skops builds it.
STORED_CHECKS = {kind: family.check_stored for family in FAMILIES.values() for kind in family.stored_types}
# The largest archive member a stored check reads (its declared size bounds what zipfile decompresses).
MAX_MEMBER_BYTES = 512 * 1024 * 1024
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


def _schema(data: bytes) -> Any:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise RefusedModel(f"not a skops file: {exc}") from None


def _nodes(schema: Any) -> list[tuple[str, dict[str, Any], str]]:
    """Every object node of a skops schema: its `module.Class`, the node, and the pipeline step it is in."""
    found: list[tuple[str, dict[str, Any], str]] = []
    stack: list[tuple[str, Any]] = [("model", schema)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            if "__module__" in node and "__class__" in node:
                found.append((f"{node['__module__']}.{node['__class__']}", node, where))
            content = node.get("content")
            if node.get("__loader__") == "TupleNode" and isinstance(content, list) and len(content) == 2:
                where = _step_name(content[0]) or where  # a (name, step) pair: what is inside is that step
            stack.extend((where, child) for child in node.values())
        elif isinstance(node, list):
            stack.extend((where, child) for child in node)
    return found


def _step_name(node: Any) -> str | None:
    if isinstance(node, dict) and node.get("__loader__") == "JsonNode":
        try:
            name = json.loads(node.get("content", ""))
        except (TypeError, ValueError):
            return None
        return name if isinstance(name, str) else None
    return None


def types_in(data: bytes) -> set[str]:
    """Every `module.Class` a skops file would construct, read from its schema without loading it."""
    return {kind for kind, *_ in _nodes(_schema(data))}


def check_stored(data: bytes) -> None:
    """Each family's check of its stored models (a booster's own bytes), before any library parses them."""
    found = [entry for entry in _nodes(_schema(data)) if entry[0] in STORED_CHECKS]
    if not found:
        return
    archive = zipfile.ZipFile(io.BytesIO(data))

    def read(member: str) -> bytes:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise StructureError(f"the skops file has no member {member!r}") from None
        if info.file_size > MAX_MEMBER_BYTES:
            raise StructureError(f"its member {member!r} is {info.file_size} bytes, over {MAX_MEMBER_BYTES}")
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise StructureError(f"its member {member!r} cannot be read: {exc}") from None

    with archive:
        for kind, node, where in found:
            try:
                STORED_CHECKS[kind](where, node, read)
            except StructureError as exc:
                raise RefusedModel(str(exc)) from None
            except Exception as exc:  # stored state of a shape the check did not foresee: refused, never loaded
                raise RefusedModel(f"{where}: its stored {kind} cannot be checked ({type(exc).__name__})") from None


def load_estimator(model_dir: Path) -> Any:
    """The fitted Pipeline of a model directory, loaded by skops with the allow-list."""
    return load_estimator_bytes(model_file(model_dir).read_bytes())


def load_estimator_bytes(data: bytes) -> Any:
    """The fitted Pipeline in a skops file's bytes, loaded with the allow-list."""
    import skops.io  # slow to import; only loading needs it

    unknown = types_in(data) - ALLOWED_TYPES
    if unknown:
        raise RefusedModel(refusal_of(unknown))
    check_stored(data)  # a booster's own bytes, before its library's parser trusts them
    try:
        estimator = skops.io.loads(data, trusted=sorted(ALLOWED_TYPES))
    except Exception as exc:  # skops raises its own errors for a damaged or hostile file
        raise RefusedModel(f"skops cannot load the model: {_first_line(exc)}") from None
    if type(estimator).__module__ + "." + type(estimator).__name__ != "sklearn.pipeline.Pipeline":
        raise RefusedModel(f"expected a sklearn Pipeline, got {type(estimator).__name__}")
    return estimator


def refusal_of(unknown: set[str]) -> str:
    """Why a file naming `unknown` types is refused: the project's own classes this code lacks, named apart."""
    own = sorted(t for t in unknown if t.split(".")[0] in OWN_PACKAGES)
    other = sorted(unknown - set(own))
    parts = [f"types outside the allow-list: {', '.join(other)}"] if other else []
    if own:
        parts.append(
            f"classes of the project's own code that this serving code does not have: {', '.join(own)} "
            "(the version was trained from another commit's features/ or families/)"
        )
    return "; ".join(parts)


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
