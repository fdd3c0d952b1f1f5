"""The model families this project can train, release and serve: one module each, found here.

`model.type` in params.yaml, the `model.<family>` params sections, the skops
allow-list and the structure checks are all derived from `FAMILIES`. Adding a
family is one module in this folder that defines `FAMILY` (see _seam.py), its
params in params.yaml and nothing else; tests iterate over `FAMILIES`.
Modules whose names start with an underscore are helpers, not families.
"""

from __future__ import annotations

import importlib
import pkgutil

from families._seam import SHARED_TYPES, Family, FamilyParams, StructureError

__all__ = ["FAMILIES", "Family", "FamilyParams", "StructureError", "allowed_types", "family_of"]


def _discover() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
        family = getattr(importlib.import_module(f"{__name__}.{module}"), "FAMILY", None)
        if not isinstance(family, Family):
            raise TypeError(f"families/{module}.py defines no FAMILY")
        if family.name in found:
            raise TypeError(f"two families are named {family.name!r}")
        found[family.name] = family
    return found


FAMILIES: dict[str, Family] = _discover()


def family_of(estimator: object) -> Family | None:
    """The family whose classifier `estimator` is, if any."""
    return next((family for family in FAMILIES.values() if family.owns(estimator)), None)


def allowed_types() -> frozenset[str]:
    """Everything skops may construct: the shared types, every family's, and the project's own feature steps."""
    from features import feature_types

    return SHARED_TYPES.union(*(family.allowed_types for family in FAMILIES.values())) | feature_types()
