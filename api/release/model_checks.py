"""Structural checks of a loaded estimator: no index that compiled code would follow out of bounds.

skops builds only allow-listed types, but the arrays inside them are data: a
tree whose node points past the end of its node array, or at a feature the
input does not have, makes scikit-learn's compiled predict read (or loop)
outside memory and kills the process. These checks prove, for every tree a
model carries, that every walk from the root ends at a leaf through valid
indices, before the model answers anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from api.release.safe_model import RefusedModel

TREE_LEAF = -1  # sklearn.tree._tree.TREE_LEAF


def check_structure(pipeline: Any) -> None:
    """Raise RefusedModel naming the first tree (or split) that compiled code could not walk safely."""
    steps = getattr(pipeline, "steps", None)
    if not steps:
        raise RefusedModel("the pipeline has no steps")
    for name, estimator in steps:
        width = getattr(estimator, "n_features_in_", None)
        if hasattr(estimator, "tree_"):
            _check_tree(name, estimator.tree_, width)
        for i, tree in enumerate(getattr(estimator, "estimators_", None) or []):
            if hasattr(tree, "tree_"):
                _check_tree(f"{name}.estimators_[{i}]", tree.tree_, width)
        if hasattr(estimator, "_predictors"):
            _check_hist_gradient_boosting(name, estimator, width)


def _check_tree(where: str, tree: Any, width: int | None) -> None:
    nodes = getattr(tree, "node_count", None)
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    feature = np.asarray(tree.feature)
    if nodes is None or nodes < 1 or not len(left) == len(right) == len(feature) == nodes:
        raise RefusedModel(f"{where}: tree arrays disagree with its node count")
    if width is None or tree.n_features != width:
        raise RefusedModel(f"{where}: tree expects {tree.n_features} features, its estimator {width}")
    _check_walk(where, left, right, feature, leaf=left == TREE_LEAF, width=width)
    if np.asarray(tree.value).shape[0] != nodes:
        raise RefusedModel(f"{where}: tree values do not match its nodes")


def _check_hist_gradient_boosting(where: str, estimator: Any, width: int | None) -> None:
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    mapper = getattr(estimator, "_bin_mapper", None)
    categorical = getattr(mapper, "is_categorical_", None)
    if categorical is not None and np.asarray(categorical).any():
        raise RefusedModel(f"{where}: categorical splits are not built by this project")
    if width is None:
        raise RefusedModel(f"{where}: no input width")
    for i, iteration in enumerate(estimator._predictors):
        for k, predictor in enumerate(iteration):
            label = f"{where}._predictors[{i}][{k}]"
            nodes = np.asarray(predictor.nodes)
            if nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1 or len(nodes) < 1:
                raise RefusedModel(f"{label}: node array of an unexpected shape or type")
            leaf = nodes["is_leaf"] != 0
            if nodes["is_categorical"][~leaf].any():
                raise RefusedModel(f"{label}: categorical splits are not built by this project")
            left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
            _check_walk(label, left, right, nodes["feature_idx"], leaf=leaf, width=width)


def _check_walk(
    where: str, left: np.ndarray, right: np.ndarray, feature: np.ndarray, leaf: np.ndarray, width: int
) -> None:
    """Every split points forward to nodes that exist and reads a feature the input has.

    Children after their parent: every walk from the root moves forward, so it ends.
    """
    count = len(left)
    index = np.arange(count)
    split = ~leaf
    for name, child in (("left", left), ("right", right)):
        bad = split & ((child <= index) | (child >= count))
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise RefusedModel(f"{where}: node {node}'s {name} child {int(child[node])} is outside the tree")
    bad = split & ((feature < 0) | (feature >= width))
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise RefusedModel(f"{where}: node {node} splits on feature {int(feature[node])} of {width}")
