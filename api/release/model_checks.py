"""Structural checks of a loaded pipeline: no index that compiled code would follow out of bounds.

skops builds only allow-listed types, but the arrays inside them are data, and
XGBoost's and LightGBM's boosters are parsed by their own C++ from bytes: a
tree whose node points past the end of its node array, or at a feature the
input does not have, makes compiled predict code read (or loop) outside memory
and kills the process. The final step must be a declared family's classifier,
and its family's check (families/) proves, for every tree it carries, that
every walk from the root ends at a leaf through valid indices, before the
model answers anything. No other step may be a model. A booster's stored bytes
were already checked before its library parsed them (each family's
check_stored, run by safe_model.load_estimator_bytes): this is the second look,
at what the library built.
"""

from __future__ import annotations

from typing import Any

from api.release.safe_model import RefusedModel
from families import StructureError, family_of


def check_structure(pipeline: Any) -> None:
    """Raise RefusedModel naming the first tree (or split, or step) that compiled code could not walk safely."""
    steps = getattr(pipeline, "steps", None)
    if not steps:
        raise RefusedModel("the pipeline has no steps")
    *before, (name, classifier) = steps
    for step_name, step in before:
        if family_of(step) is not None or any(hasattr(step, a) for a in ("tree_", "estimators_", "_predictors")):
            raise RefusedModel(f"step {step_name!r} is a model; only the final step may be one")
    family = family_of(classifier)
    if family is None:
        kind = f"{type(classifier).__module__}.{type(classifier).__name__}"
        raise RefusedModel(f"the final step {name!r} ({kind}) is no declared family's classifier")
    width = getattr(classifier, "n_features_in_", None)
    if not isinstance(width, int) or width < 1:
        raise RefusedModel(f"{name}: no input width")
    try:
        family.check(name, classifier, width)
    except StructureError as exc:
        raise RefusedModel(str(exc)) from None
