"""The team's own feature code: transformers that run, in the order params.yaml names them, before the model.

Put a transformer in a module here (see churn.py) and name it in params.yaml
as `module.Class` under `model.features`. Each takes the data frame of a
request's records (or the training rows) and returns it with columns added or
changed; the family's preprocessing then sees the new columns like any other
(numbers as numbers, text as categories).

Trust: these classes are code, loaded by name when a version is. They are
trusted because they ship in the same reviewed commit as the image that serves
them, so the skops allow-list admits the classes defined in this package and
nothing else; a version that names a class this package does not have is
refused with the class named. Keep their fitted state to plain values (numbers,
text, lists, dicts, numpy arrays): that is what the allow-list lets skops build.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

PACKAGE = __name__


def feature_types() -> frozenset[str]:
    """`module.Class` of every class defined in this package: what a version may name of the project's code."""
    found: set[str] = set()
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        found.update(
            f"{cls.__module__}.{cls.__qualname__}"
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__
        )
    return frozenset(found)


def transformer_class(name: str) -> type:
    """The class `module.Class` of this package, or ValueError naming what is wrong (nothing outside is imported)."""
    module_name, _, class_name = name.rpartition(".")
    known = {info.name for info in pkgutil.iter_modules(__path__)}
    if module_name not in known:
        raise ValueError(f"no module {module_name!r} in features/ (there are: {', '.join(sorted(known)) or 'none'})")
    cls = getattr(importlib.import_module(f"{PACKAGE}.{module_name}"), class_name, None)
    if not inspect.isclass(cls) or cls.__module__ != f"{PACKAGE}.{module_name}":
        raise ValueError(f"features/{module_name}.py defines no class {class_name!r}")
    if not (hasattr(cls, "fit") and hasattr(cls, "transform")):
        raise ValueError(f"features.{name} is not a transformer (it needs fit and transform)")
    return cls
