"""XGBoost's gradient-boosted trees, with XGBoost's own handling of missing values and categories.

Stored inside the pipeline's skops file: the booster's state is XGBoost's own
serialisation (UBJSON, model and configuration), handed to XGBoost's parser
by `Booster.__setstate__`. The allow-list admits XGBoost's two classes and
this project's subclass, nothing else of the library. XGBoost's parser trusts
its input (its security notes: a crafted model can read out of bounds), so
`check_stored` reads the stored bytes first (families/_ubjson.py, bounded) and
refuses any index XGBoost's loader would follow unchecked, before XGBoost sees
them, in every process that loads; the first load is still the probe child's,
and `check` reads the loaded trees back through XGBoost's JSON dump and proves
every walk safe before anything predicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from families._seam import Family, FamilyParams, StructureError, native_preprocessing, stored_state
from families._trees import check_walk


class XGBoostParams(FamilyParams):
    """`model.xgboost`: its hyperparameters (names as XGBoost's scikit-learn API spells them)."""

    n_estimators: Annotated[int, Field(gt=0, le=5000)] = 300
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.05
    max_depth: Annotated[int, Field(gt=0, le=32)] = 4
    min_child_weight: Annotated[float, Field(ge=0)] = 1.0
    subsample: Annotated[float, Field(gt=0, le=1)] = 0.9
    colsample_bytree: Annotated[float, Field(gt=0, le=1)] = 0.9
    reg_lambda: Annotated[float, Field(ge=0)] = 1.0
    max_cat_to_onehot: Annotated[int, Field(ge=1)] = 4
    scale_pos_weight: Annotated[float, Field(gt=0)] = 2.7  # about No/Yes in the default data: F1 over accuracy


def build(numeric: list[str], categorical: list[str], params: XGBoostParams, seed: int) -> tuple[Any, Any]:
    """Native preprocessing (categories as codes, missing kept) and an unfitted LabelledXGBClassifier."""
    from families._xgboost_classifier import LabelledXGBClassifier

    # "c" marks a categorical input: XGBoost splits on category sets (enable_categorical), NaN is missing.
    kinds = ["c"] * len(categorical) + ["q"] * len(numeric)
    classifier = LabelledXGBClassifier(
        **params.model_dump(),
        tree_method="hist",
        enable_categorical=True,
        feature_types=kinds,
        n_jobs=1,  # one thread: the API runs one process per core; batch scoring parallelises by process
        random_state=seed,
    )
    return native_preprocessing(numeric, categorical), classifier


# XGBoost's own limit on category codes (they travel as float32, exact below 2**24).
MAX_CATEGORY = 2**24


def check(where: str, classifier: Any, width: int) -> None:
    """Every tree of the loaded booster, read back as XGBoost's JSON: sizes agree, walks end, features exist."""
    import orjson

    try:
        model = orjson.loads(classifier.get_booster().save_raw(raw_format="json"))
        learner = model["learner"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StructureError(f"{where}: not an XGBoost tree model ({type(exc).__name__}: {exc})") from None
    _check_learner(where, learner, width)


def check_stored(where: str, node: dict[str, Any], read: Callable[[str], bytes]) -> None:
    """The booster's stored bytes, before XGBoost's parser reads them.

    XGBoost's parser trusts its input: crafted indices in it are reads out of bounds while it loads, which no
    check of the loaded booster can see.

    They must be UBJSON that families/_ubjson.py reads within its limits, in the layout XGBoost writes for a
    gbtree model of one output, whose every index (tree ids, output groups, children, parents, features,
    category sets) points inside what it indexes.
    """
    from families._ubjson import UBJSONError, decode

    handle = stored_state(where, node).get("handle")
    if handle is None or handle.get("__loader__") != "BytearrayNode" or not isinstance(handle.get("file"), str):
        raise StructureError(f"{where}: the booster's stored state holds no serialised model")
    try:
        state = decode(read(handle["file"]))
    except UBJSONError as exc:
        raise StructureError(f"{where}: the stored booster is not UBJSON XGBoost writes ({exc})") from None
    try:
        config, learner = state["Config"]["learner"], state["Model"]["learner"]
        declared = _count(learner["learner_model_param"], "num_feature")
        configured = config["learner_model_param"]
        booster_names = (config["gradient_booster"]["name"], learner["gradient_booster"]["name"])
    except (KeyError, TypeError) as exc:
        raise StructureError(f"{where}: the stored booster lacks {exc}") from None
    if not isinstance(state, dict) or set(state) != {"Config", "Model"}:
        raise StructureError(f"{where}: the stored booster is not XGBoost's {{Config, Model}}")
    if booster_names != ("gbtree", "gbtree"):
        raise StructureError(f"{where}: the stored booster is {booster_names}, not gbtree (this family builds gbtree)")
    for name in ("num_feature", "num_class", "num_target"):
        if not isinstance(configured, dict) or configured.get(name) != learner["learner_model_param"].get(name):
            raise StructureError(f"{where}: the stored booster's configuration and model disagree on {name}")
    _check_learner(where, learner, declared, stored=True)


def _count(fields: Any, name: str, limit: int = 2**31 - 1) -> int:
    """A count XGBoost stores as decimal text (dmlc parameters), strictly: digits only, below `limit`."""
    text = fields[name] if isinstance(fields, dict) else None
    if not isinstance(text, str) or not text.isascii() or not text.isdecimal() or int(text) > limit:
        raise StructureError(f"{name}={text!r} is not a count")
    return int(text)


def _check_learner(where: str, learner: Any, width: int, stored: bool = False) -> None:
    """The trees of XGBoost's `learner` (loaded and dumped as JSON, or stored as UBJSON) read `width` features."""
    try:
        declared = _count(learner["learner_model_param"], "num_feature")
        groups = max(
            _count(learner["learner_model_param"], "num_class"), _count(learner["learner_model_param"], "num_target"), 1
        )
        booster = learner["gradient_booster"]["model"]
        trees = booster["trees"]
        group = np.asarray(booster["tree_info"], np.int64)
        indptr = np.asarray(booster.get("iteration_indptr", [0, len(trees)]), np.int64)
        counted = _count(booster["gbtree_model_param"], "num_trees")
        parallel = _count(booster["gbtree_model_param"], "num_parallel_tree")
        targets = _count(learner["learner_model_param"], "num_target")
    except (KeyError, TypeError, ValueError, AttributeError, StructureError) as exc:
        raise StructureError(f"{where}: not an XGBoost tree model ({type(exc).__name__}: {exc})") from None
    if declared != width:
        raise StructureError(f"{where}: the booster reads {declared} features, the pipeline gives it {width}")
    if not isinstance(trees, list) or not trees:
        raise StructureError(f"{where}: a booster without trees")
    if not counted == len(group) == len(trees) or len(indptr) < 2 or indptr[0] != 0 or indptr[-1] != len(trees):
        raise StructureError(f"{where}: its tree count, tree_info and iteration index disagree with {len(trees)} trees")
    if (np.diff(indptr) < 0).any():
        raise StructureError(f"{where}: its iteration index goes backwards")
    if parallel != 1 or targets != 1:
        raise StructureError(f"{where}: {parallel} parallel trees and {targets} targets (this family builds 1 and 1)")
    # Each tree adds its leaf to output group tree_info[i] of the row: one past the groups writes outside it.
    bad = (group < 0) | (group >= groups)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StructureError(f"{where}.trees[{i}]: adds to output group {int(group[i])} of {groups}")
    if stored:
        _check_stored_learner(where, learner, booster, width)
    for i, tree in enumerate(trees):
        (_check_stored_tree if stored else _check_tree)(f"{where}.trees[{i}]", tree, width, i)


# What XGBoost's loader reads of each tree, typed (as it writes them; read typed, any other type is its error):
# the per-node arrays, each num_nodes long, and the category-set arrays.
NODE_ARRAYS = {
    "loss_changes": (">f4",),
    "sum_hessian": (">f4",),
    "base_weights": (">f4",),
    "left_children": (">i4",),
    "right_children": (">i4",),
    "parents": (">i4",),
    "split_indices": (">i4", ">i8"),
    "split_conditions": (">f4",),
    "default_left": ("|u1",),
    "split_type": ("|u1",),
}
CATEGORY_ARRAYS = {
    "categories_segments": ">i8",
    "categories_sizes": ">i8",
    "categories_nodes": ">i4",
    "categories": ">i4",
}
ROOT_PARENT = 2**31 - 1  # XGBoost's kInvalidNodeId (-1) as a parent index (its top bit is the is-left flag)


def _check_stored_learner(where: str, learner: dict[str, Any], booster: dict[str, Any], width: int) -> None:
    """What the stored model holds besides its trees: no feature or category tables that disagree with it."""
    names, kinds = learner.get("feature_names", []), learner.get("feature_types", [])
    for name, table in (("feature_names", names), ("feature_types", kinds)):
        if not isinstance(table, list) or len(table) not in (0, width) or not all(isinstance(v, str) for v in table):
            raise StructureError(f"{where}: its {name} are not {width} names")
    if not set(kinds) <= {"q", "c", "int", "float", "i"}:
        raise StructureError(f"{where}: feature types {sorted(set(kinds))} (XGBoost knows q, c, int, float, i)")
    cats = booster.get("cats", {})
    # A category recoder: the family feeds codes, never text, so an honest booster stores an empty one.
    if not isinstance(cats, dict) or any(len(v) for v in cats.values() if hasattr(v, "__len__")):
        raise StructureError(f"{where}: a stored category recoder (this family stores none)")
    for name in ("tree_info", "iteration_indptr"):
        values = booster.get(name, [])
        if not isinstance(values, list) or not all(type(v) is int for v in values):
            raise StructureError(f"{where}: its {name} is not a list of integers")


def _check_stored_tree(where: str, tree: Any, width: int, index: int) -> None:
    """A stored tree, as XGBoost's RegTree::LoadModel reads it: every index it follows without a check."""
    if not isinstance(tree, dict):
        raise StructureError(f"{where}: not a tree")
    if type(tree.get("id")) is not int or tree["id"] != index:
        raise StructureError(f"{where}: its id is {tree.get('id')!r}, not its place {index}")  # a tree slot left empty
    try:
        nodes = _count(tree["tree_param"], "num_nodes")
        deleted = _count(tree["tree_param"], "num_deleted")
        leaf_vector = _count(tree["tree_param"], "size_leaf_vector")
        features = _count(tree["tree_param"], "num_feature")
    except (KeyError, StructureError) as exc:
        raise StructureError(f"{where}: its tree_param is not XGBoost's ({exc})") from None
    if leaf_vector > 1 or deleted or features != width:
        raise StructureError(
            f"{where}: size_leaf_vector={leaf_vector}, num_deleted={deleted}, num_feature={features} (expected 1, 0, "
            f"{width})"
        )
    for name, dtypes in NODE_ARRAYS.items():
        array = tree.get(name)
        if not isinstance(array, np.ndarray) or array.dtype.str not in dtypes or len(array) != nodes:
            raise StructureError(f"{where}: its {name} is not {nodes} values of {' or '.join(dtypes)}")
    for name, dtype in CATEGORY_ARRAYS.items():
        array = tree.get(name)
        if not isinstance(array, np.ndarray) or array.dtype.str != dtype:
            raise StructureError(f"{where}: its {name} is not an array of {dtype}")
    _check_tree(where, tree, width)  # the walk, and the category sets inside the tree's list (sizes are sane now)
    left, right = tree["left_children"].astype(np.int64), tree["right_children"].astype(np.int64)
    leaf = left == -1
    bad = leaf & (right != -1)
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise StructureError(f"{where}: node {node} has a right child {int(right[node])} and no left one")
    feature = tree["split_indices"].astype(np.int64)
    bad = (feature < 0) | (feature >= width)
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise StructureError(f"{where}: node {node} (a leaf) splits on feature {int(feature[node])} of {width}")
    # The loader sets each node's is-left flag from its parent's left child: parents[i] is an index it follows.
    parents = tree["parents"].astype(np.int64)
    if parents[0] != ROOT_PARENT:
        raise StructureError(f"{where}: node 0's parent is {int(parents[0])}, not none")
    rest = parents[1:]
    bad = (rest < 0) | (rest >= nodes)
    if not bad.any():
        owner = np.clip(rest, 0, nodes - 1)
        bad = (left[owner] != np.arange(1, nodes)) & (right[owner] != np.arange(1, nodes))
    if bad.any():
        node = int(np.flatnonzero(bad)[0]) + 1
        raise StructureError(f"{where}: node {node}'s parent {int(parents[node])} is not a node that points at it")
    cat_nodes = tree["categories_nodes"].astype(np.int64)
    sizes = tree["categories_sizes"].astype(np.int64)
    # The loader walks the nodes in order, taking the next listed category node when it meets it.
    if len(cat_nodes) and ((np.diff(cat_nodes) <= 0).any() or cat_nodes[0] < 0 or cat_nodes[-1] >= nodes):
        raise StructureError(f"{where}: its categories_nodes are not increasing node indices below {nodes}")
    if (sizes < 1).any():
        raise StructureError(f"{where}: an empty category set in categories_sizes")


def _check_tree(where: str, tree: dict[str, Any], width: int, index: int = 0) -> None:
    """A tree as the loaded booster dumps it: arrays that agree, walks that end, category sets inside the tree."""
    try:
        nodes = int(tree["tree_param"]["num_nodes"])
        leaf_vector = int(tree["tree_param"].get("size_leaf_vector", "1"))
        left, right = np.asarray(tree["left_children"], np.int64), np.asarray(tree["right_children"], np.int64)
        feature = np.asarray(tree["split_indices"], np.int64)
        kind = np.asarray(tree.get("split_type", np.zeros(nodes)), np.int64)
        arrays = [left, right, feature, kind, np.asarray(tree["split_conditions"]), np.asarray(tree["base_weights"])]
        arrays += [np.asarray(tree[name]) for name in ("default_left", "parents") if name in tree]
        cat_nodes = np.asarray(tree.get("categories_nodes", []), np.int64)
        segments = np.asarray(tree.get("categories_segments", []), np.int64)
        sizes = np.asarray(tree.get("categories_sizes", []), np.int64)
        categories = np.asarray(tree.get("categories", []), np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise StructureError(f"{where}: tree of an unexpected shape ({type(exc).__name__}: {exc})") from None
    if leaf_vector > 1:  # a multi-output tree has another layout: this family builds none
        raise StructureError(f"{where}: a tree with leaf vectors of {leaf_vector}")
    if nodes < 1 or any(len(a) != nodes for a in arrays):
        raise StructureError(f"{where}: tree arrays disagree with its {nodes} nodes")
    leaf = left == -1
    check_walk(where, left, right, feature, leaf=leaf, width=width)
    # A categorical split (split_type 1) reads its category set: exactly the split nodes listed in categories_nodes,
    # each a segment inside the tree's category list, of codes a bitset can hold.
    bad = ~leaf & ((kind < 0) | (kind > 1))
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise StructureError(f"{where}: node {node} has split type {int(kind[node])}")
    if not len(cat_nodes) == len(segments) == len(sizes):
        raise StructureError(f"{where}: its categorical split arrays disagree in length")
    listed = np.zeros(nodes, bool)
    inside = (cat_nodes >= 0) & (cat_nodes < nodes)
    listed[cat_nodes[inside]] = True
    outside = ~inside | (segments < 0) | (sizes < 0) | (segments + sizes > len(categories))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise StructureError(
            f"{where}: node {int(cat_nodes[i])}'s category set points outside the tree (or the tree's category list)"
        )
    bad = ~leaf & ((kind == 1) != listed)
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise StructureError(f"{where}: node {node}'s split type disagrees with the tree's category sets")
    if ((categories < 0) | (categories >= MAX_CATEGORY)).any():
        raise StructureError(f"{where}: a category code outside 0..{MAX_CATEGORY - 1}")


FAMILY = Family(
    name="xgboost",
    params=XGBoostParams,
    build=build,
    classifier_types=frozenset({"families._xgboost_classifier.LabelledXGBClassifier"}),
    # The booster's state is its serialisation, a bytearray.
    allowed_types=frozenset(
        {"families._xgboost_classifier.LabelledXGBClassifier", "xgboost.core.Booster", "builtins.bytearray"}
    ),
    check=check,
    stored_types=frozenset({"xgboost.core.Booster"}),
    check_stored=check_stored,
    requirements=("xgboost-cpu==3.2.0",),
    fast_path="numpy-free sklearn preprocessing, then XGBoost's own predict (one thread)",
)
