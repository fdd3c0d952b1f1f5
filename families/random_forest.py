"""A scikit-learn random forest behind one-hot preprocessing."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from families._seam import Family, FamilyParams, StructureError, one_hot_preprocessing
from families._trees import check_sklearn_tree


class RandomForestParams(FamilyParams):
    """`model.random_forest`: its hyperparameters."""

    n_estimators: Annotated[int, Field(gt=0)] = 200
    max_depth: Annotated[int, Field(gt=0)] | None = 10
    min_samples_leaf: Annotated[int, Field(gt=0)] = 5
    class_weight: Literal["balanced", "balanced_subsample"] | None = "balanced"


def build(numeric: list[str], categorical: list[str], params: RandomForestParams, seed: int) -> tuple[Any, Any]:
    """One-hot preprocessing and an unfitted RandomForestClassifier."""
    from sklearn.ensemble import RandomForestClassifier

    return one_hot_preprocessing(numeric, categorical), RandomForestClassifier(random_state=seed, **params.model_dump())


def check(where: str, classifier: Any, width: int) -> None:
    """Every tree of the forest walks safely over `width` inputs."""
    trees = getattr(classifier, "estimators_", None) or []
    if not trees:
        raise StructureError(f"{where}: a forest without trees")
    for i, tree in enumerate(trees):
        check_sklearn_tree(f"{where}.estimators_[{i}]", getattr(tree, "tree_", None), width)


FAMILY = Family(
    name="random_forest",
    params=RandomForestParams,
    build=build,
    classifier_types=frozenset({"sklearn.ensemble._forest.RandomForestClassifier"}),
    allowed_types=frozenset(
        {
            "sklearn.ensemble._forest.RandomForestClassifier",
            "sklearn.tree._classes.DecisionTreeClassifier",
            "sklearn.tree._tree.Tree",
        }
    ),
    check=check,
)
