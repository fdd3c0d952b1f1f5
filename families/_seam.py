"""What a model family declares, and the pieces every family shares.

A family is one module in this package with a `FAMILY` (see families/__init__.py):
its params, how its preprocessing and classifier are built, which types its
fitted pipeline may contain (the skops allow-list), the structure checks run on
a loaded classifier before it answers, and the distributions serving needs.
Nothing here imports a model library at import time: the API pays only for the
families it loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class FamilyParams(BaseModel):
    """A family's hyperparameters, `model.<family>` in params.yaml: frozen, strictly typed, no unknown key."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StructureError(ValueError):
    """A loaded classifier whose stored structure compiled code could not walk safely (the message names where)."""


# Built is (preprocessing, classifier): the two last steps of the fitted pipeline, after the team's feature steps.
Build = Callable[[list[str], list[str], Any, int], tuple[Any, Any]]
Check = Callable[[str, Any, int], None]
FitParams = Callable[[list[str], list[str]], dict[str, Any]]
# (where, the skops schema node of one of `stored_types`, read(archive member) -> its bytes) -> None, or
# StructureError. Runs on the skops file's bytes before skops constructs anything, so before a model library's own
# parser sees the stored model: for a library whose parser trusts its input, the only place to refuse it safely.
StoredCheck = Callable[[str, dict[str, Any], Callable[[str], bytes]], None]


def no_stored_check(where: str, node: dict[str, Any], read: Callable[[str], bytes]) -> None:
    """A family whose stored state no foreign parser reads: nothing to check before loading."""


def stored_state(where: str, node: dict[str, Any]) -> dict[str, Any]:
    """The entries of an object's stored state (skops: an ObjectNode whose content is a DictNode), by name."""
    content = node.get("content")
    if not isinstance(content, dict) or content.get("__loader__") != "DictNode":
        raise StructureError(f"{where}: its stored state is not a plain dict")
    entries = content.get("content")
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise StructureError(f"{where}: its stored state is not a plain dict")
    return entries


def no_fit_params(numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    """A classifier that needs nothing at fit time beyond the rows."""
    return {}


@dataclass(frozen=True)
class Family:
    """One model family: everything the pipeline and the API need to know about it, in one place."""

    name: str  # `model.type`
    params: type[FamilyParams]  # `model.<name>`
    build: Build  # (numeric columns, categorical columns, params, seed) -> (preprocessing, unfitted classifier)
    classifier_types: frozenset[str]  # module.Class of its classifier: whose loaded instances `check` judges
    allowed_types: frozenset[str]  # what skops may construct for its classifier (besides SHARED_TYPES)
    check: Check  # (step name, loaded classifier, input width) -> None, or StructureError
    fit_params: FitParams = no_fit_params  # (numeric, categorical) -> keyword arguments of the classifier's fit
    requirements: tuple[str, ...] = ()  # pip lines a served version needs beyond scikit-learn and skops
    fast_path: str = "numpy preprocessing, the classifier's own predict_proba"  # what serves it (README table)
    stored_types: frozenset[str] = frozenset()  # module.Class of the skops nodes `check_stored` reads before loading
    check_stored: StoredCheck = no_stored_check  # their stored bytes, before the library's parser sees them

    def owns(self, estimator: object) -> bool:
        """Whether `estimator` is this family's classifier."""
        return f"{type(estimator).__module__}.{type(estimator).__name__}" in self.classifier_types


# Every type the shared preprocessing and the pipeline around a classifier contain, plus the plain containers
# and numpy scalars skops writes. tests/unit/test_safe_loading.py fits every family and checks the allow-list
# covers it, so a library upgrade that adds an internal type is caught there, not when a version loads.
SHARED_TYPES = frozenset(
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
        "sklearn.compose._column_transformer.ColumnTransformer",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._encoders.OneHotEncoder",
        "sklearn.preprocessing._encoders.OrdinalEncoder",
        "sklearn.preprocessing._function_transformer.FunctionTransformer",  # a "passthrough" block, fitted
    }
)


def one_hot_preprocessing(numeric: list[str], categorical: list[str]) -> Any:
    """Median imputation and scaling for numbers, constant imputation and one-hot for text (the compiled path's)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        transformers.append(("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric))
    if categorical:
        text = make_pipeline(
            SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")
        )
        transformers.append(("categorical", text, categorical))
    return ColumnTransformer(transformers)


def native_preprocessing(numeric: list[str], categorical: list[str]) -> Any:
    """For boosters that handle missing values and categories themselves, as their documentation says.

    Numbers pass through with NaN kept (the booster learns where missing values go). Text becomes the
    category's code, numbered in sorted order at fit time; a category unseen in training or a missing value
    becomes NaN, which the booster treats as missing. Categorical columns come first, so the classifier
    is told they are the first `len(categorical)` inputs.
    """
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OrdinalEncoder

    transformers: list[tuple[str, Any, list[str]]] = []
    if categorical:
        codes = OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan, dtype=np.float64
        )
        transformers.append(("categorical", codes, categorical))
    if numeric:
        transformers.append(("numeric", "passthrough", numeric))
    return ColumnTransformer(transformers)
