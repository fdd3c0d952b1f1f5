"""The serving contract: what a candidate's input schema changes for every client of the API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypedDict

# A column type that accepts every value of the key type (MLflow column types).
WIDER = {"integer": {"long", "float", "double"}, "long": {"double"}, "float": {"double"}}


class Field(Protocol):
    """An input field of a serving schema (api.model.schema.FeatureSpec is one): name, MLflow column type, required."""

    @property
    def name(self) -> str:
        """The field's name."""

    @property
    def type(self) -> str:
        """The MLflow column type: double, long, string, boolean, ..."""

    @property
    def required(self) -> bool:
        """Whether a client must send it."""


class AddedField(TypedDict):
    """A field the candidate accepts and production does not."""

    name: str
    type: str
    required: bool


# A field whose column type changed; `breaking` when the new type does not accept every value of the old one.
Retyped = TypedDict("Retyped", {"name": str, "from": str, "to": str, "breaking": bool})


@dataclass(frozen=True)
class SchemaDiff:
    """What changes between production's input schema and the candidate's, field by field."""

    removed: list[str] = field(default_factory=list)
    added: list[AddedField] = field(default_factory=list)
    retyped: list[Retyped] = field(default_factory=list)
    now_required: list[str] = field(default_factory=list)

    @property
    def breaking(self) -> list[str]:
        """Why clients of production would break, one phrase per field."""
        reasons = [f"removes field {name!r}" for name in self.removed]
        reasons += [f"changes {r['name']!r} from {r['from']} to {r['to']}" for r in self.retyped if r["breaking"]]
        reasons += [f"adds required field {a['name']!r}" for a in self.added if a["required"]]
        reasons += [f"makes {name!r} required" for name in self.now_required]
        return reasons

    def to_dict(self) -> dict[str, Any]:
        """The diff and its breaking changes, as plain data for the report."""
        return {**asdict(self), "breaking": self.breaking}


def compare_schemas(production: Sequence[Field], candidate: Sequence[Field]) -> SchemaDiff:
    """What changes for a client that sends what production accepts."""
    before = {f.name: f for f in production}
    after = {f.name: f for f in candidate}
    retyped: list[Retyped] = [
        {
            "name": name,
            "from": before[name].type,
            "to": after[name].type,
            "breaking": after[name].type not in WIDER.get(before[name].type, set()),
        }
        for name in before
        if name in after and before[name].type != after[name].type
    ]
    return SchemaDiff(
        removed=[name for name in before if name not in after],
        added=[
            {"name": after[name].name, "type": after[name].type, "required": after[name].required}
            for name in after
            if name not in before
        ],
        retyped=retyped,
        now_required=[name for name in before if name in after and after[name].required and not before[name].required],
    )
