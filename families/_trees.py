"""The walk every tree family must allow: from the root, through valid indices, forward, to a leaf."""

from __future__ import annotations

import numpy as np

from families._seam import StructureError


def check_walk(
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
            raise StructureError(f"{where}: node {node}'s {name} child {int(child[node])} is outside the tree")
    bad = split & ((feature < 0) | (feature >= width))
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise StructureError(f"{where}: node {node} splits on feature {int(feature[node])} of {width}")


def check_sklearn_tree(where: str, tree: object, width: int) -> None:
    """A fitted sklearn Tree (a decision tree's `tree_`): arrays that agree, and a safe walk."""
    nodes = getattr(tree, "node_count", None)
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)  # type: ignore[attr-defined]
    feature = np.asarray(tree.feature)  # type: ignore[attr-defined]
    if nodes is None or nodes < 1 or not len(left) == len(right) == len(feature) == nodes:
        raise StructureError(f"{where}: tree arrays disagree with its node count")
    if tree.n_features != width:  # type: ignore[attr-defined]
        raise StructureError(f"{where}: tree expects {tree.n_features} features, its estimator {width}")  # type: ignore[attr-defined]
    check_walk(where, left, right, feature, leaf=left == -1, width=width)  # -1: sklearn's TREE_LEAF
    if np.asarray(tree.value).shape[0] != nodes:  # type: ignore[attr-defined]
        raise StructureError(f"{where}: tree values do not match its nodes")
