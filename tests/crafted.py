"""Crafted models, as an attacker with registry write access would make them: allow-listed types, hostile arrays.

Each function changes a fitted pipeline in place so that scikit-learn's
compiled predict would read outside memory or never stop; the pipeline still
serialises with skops and loads through the allow-list.
"""

from __future__ import annotations

import numpy as np


def _first_tree(pipeline):
    final = pipeline.steps[-1][1]
    return final.estimators_[len(final.estimators_) // 2].tree_


def _set_nodes(tree, change) -> None:
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    change(nodes)
    state["nodes"] = nodes
    tree.__setstate__(state)


def _last_split(nodes) -> int:
    return int(np.flatnonzero(nodes["left_child"] != -1)[-1])


def child_out_of_range(pipeline):
    """One tree's root points a million nodes past the end: every prediction walks into it."""

    def change(nodes):
        nodes["left_child"][0] = nodes["right_child"][0] = 10**6

    _set_nodes(_first_tree(pipeline), change)


def hidden_child_out_of_range(pipeline):
    """A split deep in one tree points past the end: the stored examples may never walk there."""
    _set_nodes(_first_tree(pipeline), lambda n: n["left_child"].__setitem__(_last_split(n), 10**6))


def negative_child(pipeline):
    _set_nodes(_first_tree(pipeline), lambda n: n["right_child"].__setitem__(_last_split(n), -7))


def feature_out_of_range(pipeline):
    """A split reads column 5,000 of an input that has a few dozen."""
    _set_nodes(_first_tree(pipeline), lambda n: n["feature"].__setitem__(_last_split(n), 5000))


def cycle(pipeline):
    """A split points back at the root: a walk that reaches it never ends."""
    _set_nodes(_first_tree(pipeline), lambda n: n["right_child"].__setitem__(_last_split(n), 0))


def hist_gradient_boosting_child(pipeline):
    """A histogram-gradient-boosting predictor's split points past its nodes."""
    nodes = pipeline.steps[-1][1]._predictors[-1][0].nodes
    split = int(np.flatnonzero(nodes["is_leaf"] == 0)[-1])
    nodes["right"][split] = 4_000_000


def hist_gradient_boosting_feature(pipeline):
    nodes = pipeline.steps[-1][1]._predictors[0][0].nodes
    nodes["feature_idx"][0] = -3


FOREST_ATTACKS = [child_out_of_range, hidden_child_out_of_range, negative_child, feature_out_of_range, cycle]
BOOSTING_ATTACKS = [hist_gradient_boosting_child, hist_gradient_boosting_feature]
