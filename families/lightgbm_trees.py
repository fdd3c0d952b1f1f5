"""LightGBM's gradient-boosted trees, with LightGBM's own handling of missing values and categories.

Stored inside the pipeline's skops file: the booster's state is LightGBM's
own text model, handed to LightGBM's parser by `Booster.__setstate__`. The
allow-list admits LightGBM's two classes and nothing else of the library.
LightGBM has open reports of out-of-bounds reads on crafted text models, so
`check_stored` reads the stored text first and refuses anything LightGBM's
parser would read past or read otherwise than Python does, before LightGBM
sees it, in every process that loads; the first load is still the probe
child's, and `check` reads the loaded trees back as LightGBM's text and proves
every walk safe before anything predicts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from families._seam import Family, FamilyParams, StructureError, native_preprocessing, stored_state


class LightGBMParams(FamilyParams):
    """`model.lightgbm`: its hyperparameters (names as LightGBM's scikit-learn API spells them)."""

    n_estimators: Annotated[int, Field(gt=0, le=5000)] = 300
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.05
    num_leaves: Annotated[int, Field(ge=2, le=4096)] = 15
    min_child_samples: Annotated[int, Field(ge=1)] = 20
    subsample: Annotated[float, Field(gt=0, le=1)] = 0.9
    subsample_freq: Annotated[int, Field(ge=0)] = 1
    colsample_bytree: Annotated[float, Field(gt=0, le=1)] = 0.9
    reg_lambda: Annotated[float, Field(ge=0)] = 1.0
    class_weight: Literal["balanced"] | None = "balanced"


def build(numeric: list[str], categorical: list[str], params: LightGBMParams, seed: int) -> tuple[Any, Any]:
    """Native preprocessing (categories as codes, missing kept) and an unfitted LGBMClassifier."""
    from lightgbm import LGBMClassifier

    classifier = LGBMClassifier(
        **params.model_dump(),
        n_jobs=1,  # one thread: the API runs one process per core; batch scoring parallelises by process
        deterministic=True,
        random_state=seed,
        verbose=-1,
    )
    return native_preprocessing(numeric, categorical), classifier


def fit_params(numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    """The categorical inputs, by position: native_preprocessing puts them first."""
    return {"categorical_feature": list(range(len(categorical)))}


def check(where: str, classifier: Any, width: int) -> None:
    """Every tree of the loaded booster, read back as LightGBM's text: sizes agree, walks end, features exist."""
    try:
        # Every tree (num_iteration=-1): the default stops at a stored best_iteration, which a crafted state sets.
        text = classifier.booster_.model_to_string(num_iteration=-1)
    except Exception as exc:  # a classifier without a fitted booster
        raise StructureError(f"{where}: no LightGBM booster ({type(exc).__name__})") from None
    _check_text(where, text, width)


def check_stored(where: str, node: dict[str, Any], read: Callable[[str], bytes]) -> None:
    """The booster's stored text model, before LightGBM's parser reads it.

    LightGBM's parser trusts its input (it reads as many values as num_leaves says, whatever the line holds, and
    finds each tree where tree_sizes says): the text must be laid out exactly as LightGBM writes it, every tree
    where the header says, every array as long as its tree says, every index inside what it indexes.
    `Booster.__setstate__` parses `_handle`, else `handle`: both are checked.
    """
    state = stored_state(where, node)
    for key in ("_handle", "handle"):
        if key not in state:
            continue
        entry = state[key]
        try:
            text = json.loads(entry["content"]) if entry.get("__loader__") == "JsonNode" else entry
        except (KeyError, TypeError, ValueError):
            text = entry
        if text is None:
            continue
        if not isinstance(text, str):
            raise StructureError(f"{where}: the booster's stored {key} is not a text model")
        _check_stored_text(where, text)


# LightGBM reads a tree's lines into a map, up to this many, until a blank line (src/io/tree.cpp).
MAX_TREE_LINES = 22
MAX_LEAVES = 131072  # LightGBM's own limit on num_leaves
# A field's values, one space between each: integers, or floats (as LightGBM writes them).
_INTS = re.compile(r"-?[0-9]{1,10}( -?[0-9]{1,10})*")
_FLOAT = r"([-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]?inf|nan)"
_FLOATS = re.compile(f"{_FLOAT}( {_FLOAT})*")
# Each tree field LightGBM reads as an array, and how many values it reads: one per split, or one per leaf.
SPLIT_ARRAYS: tuple[str, ...] = (
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
)
SPLIT_ARRAYS += ("internal_value", "internal_weight", "internal_count")
LEAF_ARRAYS = ("leaf_value", "leaf_weight", "leaf_count")
INT_FIELDS: tuple[str, ...] = ("num_leaves", "num_cat", "split_feature", "decision_type", "left_child", "right_child")
INT_FIELDS += ("internal_count", "leaf_count", "cat_boundaries", "cat_threshold", "is_linear")


def _check_stored_text(where: str, text: str) -> None:
    """The text model as LightGBM's C++ will read it (src/boosting/gbdt_model_text.cpp, src/io/tree.cpp)."""
    if not text.isascii() or "\0" in text or "\r" in text:
        raise StructureError(f"{where}: the stored text model is not plain ASCII lines")
    head, *trees = text.split("\nTree=")
    if not trees:
        raise StructureError(f"{where}: a booster without trees")
    last, ended, _ = trees[-1].partition("\nend of trees")
    if not ended:
        raise StructureError(f"{where}: the stored text model has no end of its trees")
    trees[-1] = last
    fields = _unique_fields(where, [line for line in head.split("\n") if line])
    # LightGBM finds tree i at the sum of the sizes before it, unchecked: each must be its tree's size exactly.
    sizes = fields.get("tree_sizes", "").split(" ")
    actual = [str(len(f"Tree={tree}\n")) for tree in trees]
    if sizes != actual:
        raise StructureError(f"{where}: its tree_sizes are not the sizes of its {len(trees)} trees")
    try:
        declared = int(fields["max_feature_idx"]) + 1
    except (KeyError, ValueError):
        raise StructureError(f"{where}: the model text declares no max_feature_idx") from None
    if not 0 < declared <= 2**20 or len(fields.get("feature_names", "").split(" ")) != declared:
        raise StructureError(f"{where}: max_feature_idx={declared - 1} and its feature_names disagree")
    if any(line.startswith("[linear_tree: ") and line != "[linear_tree: 0]" for line in text.split("\n")):
        raise StructureError(f"{where}: a linear model (this family builds none)")
    for block in trees:
        number, _, body = block.partition("\n")
        tree_where = f"{where}.Tree={number.strip()}"
        lines = body.split("\n")
        # The tree's lines, then the blank line that ends them (a tree's size includes it).
        if len(lines) < 3 or lines[-2:] != ["", ""] or "" in lines[:-2] or len(lines) - 2 > MAX_TREE_LINES:
            raise StructureError(f"{tree_where}: its lines are not as LightGBM writes a tree")
        tree = _unique_fields(tree_where, lines[:-2], bare=False)
        _check_stored_tree(tree_where, tree)
    _check_text(where, text, declared)


def _unique_fields(where: str, lines: list[str], bare: bool = True) -> dict[str, str]:
    """`key=value` lines, each key once (LightGBM keeps the last of a repeated key; this keeps none).

    A line without `=` is a key without value in the header; in a tree, LightGBM would scan past it for one.
    """
    fields: dict[str, str] = {}
    for line in lines:
        key, equals, value = line.partition("=")
        if not equals and not bare:
            raise StructureError(f"{where}: the line {line[:40]!r} is not key=value")
        if key in fields:
            raise StructureError(f"{where}: {key or 'an empty line'} appears twice")
        fields[key] = value
    return fields


def _check_stored_tree(where: str, fields: dict[str, str]) -> None:
    """Every array LightGBM reads is exactly as long as it will read, of numbers written as LightGBM writes them.

    Strict number syntax, so that Python and LightGBM's own number parsing read the same values.
    """
    for name in (*INT_FIELDS, *SPLIT_ARRAYS, *LEAF_ARRAYS, "shrinkage"):
        value = fields.get(name)
        pattern = _INTS if name in INT_FIELDS else _FLOATS
        if value and not pattern.fullmatch(value):
            raise StructureError(f"{where}: its {name} holds something other than numbers")
    try:
        leaves = int(fields["num_leaves"])
    except (KeyError, ValueError):
        raise StructureError(f"{where}: it declares no num_leaves") from None
    if not 1 <= leaves <= MAX_LEAVES or "num_cat" not in fields or "leaf_value" not in fields:
        raise StructureError(f"{where}: num_leaves={leaves} (or no num_cat, or no leaf_value)")
    required = ("split_feature", "threshold", "left_child", "right_child") if leaves > 1 else ()
    for names, count in ((SPLIT_ARRAYS, leaves - 1), (LEAF_ARRAYS, leaves)):
        for name in names:
            value = fields.get(name)
            if value is None and name not in required:
                continue  # LightGBM fills it itself
            if name == "leaf_weight" and leaves == 1 and value == "":
                continue  # as LightGBM writes a tree of one leaf (it checks this count itself)
            if len(value.split(" ") if value else []) != count:
                raise StructureError(f"{where}: its {name} does not hold {count} values (num_leaves={leaves})")


def _check_text(where: str, text: str, width: int) -> None:
    """A text model (as LightGBM writes it) whose trees read `width` features: sizes agree, walks end."""
    header, *trees = text.split("\nTree=")
    fields = _fields(header)
    try:
        declared = int(fields["max_feature_idx"]) + 1
    except (KeyError, ValueError):
        raise StructureError(f"{where}: the model text declares no max_feature_idx") from None
    if declared != width:
        raise StructureError(f"{where}: the booster reads {declared} features, the pipeline gives it {width}")
    if not trees:
        raise StructureError(f"{where}: a booster without trees")
    # Each tree adds to output (tree number mod num_tree_per_iteration): more per iteration than classes writes
    # past the row's outputs.
    per_iteration, classes = fields.get("num_tree_per_iteration", ""), fields.get("num_class", "")
    if not per_iteration.isdigit() or per_iteration != classes or len(trees) % int(per_iteration):
        raise StructureError(
            f"{where}: {len(trees)} trees, num_tree_per_iteration={per_iteration} and num_class={classes} disagree"
        )
    for block in trees:
        number, _, body = block.partition("\n")
        _check_tree(f"{where}.Tree={number.strip()}", _fields(body.split("\nend of trees")[0]), width)


def _fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _ints(fields: dict[str, str], name: str) -> np.ndarray:
    return np.array(fields.get(name, "").split(), dtype=np.int64)


def _check_tree(where: str, fields: dict[str, str], width: int) -> None:
    try:
        leaves = int(fields["num_leaves"])
        categories = int(fields.get("num_cat", "0"))
        feature, left, right = _ints(fields, "split_feature"), _ints(fields, "left_child"), _ints(fields, "right_child")
        decision = _ints(fields, "decision_type")
        threshold = np.array(fields.get("threshold", "").split(), dtype=np.float64)
        values = fields["leaf_value"].split()
        boundaries, bitsets = _ints(fields, "cat_boundaries"), _ints(fields, "cat_threshold")
    except (KeyError, ValueError) as exc:
        raise StructureError(f"{where}: tree of an unexpected shape ({type(exc).__name__}: {exc})") from None
    splits = leaves - 1
    if (
        leaves < 1
        or len(values) != leaves
        or any(len(a) != splits for a in (feature, left, right, decision, threshold))
    ):
        raise StructureError(f"{where}: tree arrays disagree with its {leaves} leaves")
    index = np.arange(splits)
    for name, child in (("left", left), ("right", right)):
        # An inner child comes after its parent (so every walk ends); a negative one is leaf ~child.
        bad = np.where(child >= 0, (child <= index) | (child >= splits), ~child >= leaves)
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise StructureError(f"{where}: node {node}'s {name} child {int(child[node])} is outside the tree")
    bad = (feature < 0) | (feature >= width)
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise StructureError(f"{where}: node {node} splits on feature {int(feature[node])} of {width}")
    # decision_type: bit 0 categorical, bit 1 default left, bits 2-3 the missing type (0 none, 1 zero, 2 NaN).
    bad = (decision < 0) | (decision > 15) | ((decision >> 2) & 3 == 3)
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise StructureError(f"{where}: node {node} has decision type {int(decision[node])}")
    if fields.get("is_linear", "0") != "0":  # linear leaves index features of their own: never built here
        raise StructureError(f"{where}: a linear tree (this family builds none)")
    categorical = (decision & 1) == 1
    if categorical.any() or categories:
        # Split i's bitset is cat_threshold[cat_boundaries[t]:cat_boundaries[t + 1]], t = its threshold.
        if (
            categories < 0
            or len(boundaries) != categories + 1
            or boundaries[0] != 0
            or (np.diff(boundaries) < 0).any()
            or boundaries[-1] != len(bitsets)
        ):
            raise StructureError(f"{where}: its category bitsets disagree with num_cat={categories}")
        bad = categorical & ((threshold < 0) | (threshold >= categories) | (threshold != np.floor(threshold)))
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise StructureError(
                f"{where}: node {node}'s categorical split names bitset {threshold[node]:g} of {categories}"
            )


FAMILY = Family(
    name="lightgbm",
    params=LightGBMParams,
    build=build,
    classifier_types=frozenset({"lightgbm.sklearn.LGBMClassifier"}),
    allowed_types=frozenset(
        {
            "lightgbm.sklearn.LGBMClassifier",
            "lightgbm.basic.Booster",
            "collections.OrderedDict",
            "collections.defaultdict",
        }
    ),
    check=check,
    stored_types=frozenset({"lightgbm.basic.Booster"}),
    check_stored=check_stored,
    fit_params=fit_params,
    requirements=("lightgbm==4.7.0",),
    fast_path="sklearn preprocessing, then LightGBM's own predict (one thread)",
)
