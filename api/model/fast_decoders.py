"""The fast path for well-formed requests: records (or a split frame) straight to columns.

Most requests are well formed. For those, checking each column's set of value
types is a few C-level passes, where validating record by record costs
microseconds per record. Anything this check does not accept returns None and
takes the full path (pydantic for /predict, MLflow's own functions for
/invocations), which accepts or refuses it and names the problem. So this
module only decides "certainly fine"; it never words an error.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal, cast

import msgspec
import numpy as np
from msgspec.structs import astuple

from api.model.columns import Values
from api.model.schema import FeatureSpec

NoneType = type(None)

# /invocations: the value types a JSON parser produces that MLflow's enforcement
# passes through unchanged, per column type, and the column types whose optional
# fields may be null (a null in an optional double column is a NaN to pandas, as
# it is to our imputers).
INVOCATION_TYPES: dict[str, set[type]] = {"double": {int, float}, "long": {int}, "string": {str}, "boolean": {bool}}
INVOCATION_NULLABLE = frozenset({"double"})
ENTITY_TYPES = frozenset({str, int, float, NoneType})  # a customer id's JSON types (a boolean is none)


class RecordDecoder:
    """`{"records": [...]}` bytes straight to columns: msgspec parses and type-checks in one C pass.

    Types follow the pydantic model of api.model.schema: any JSON number for a numeric
    field, a string for a string field, null or absent only for optional fields,
    no unknown field. A body this rejects goes to pydantic, which words why.

    `categories`: a text feature's known values (the model's vocabulary). A first decoder
    takes only those, as Literals: msgspec then hands back its own string objects, with
    their hashes cached, instead of allocating one per value, and the compiled path's
    lookups of them are cheaper too. A body with any other value (an unseen category)
    is decoded again by the plain decoder, which takes any string.
    """

    def __init__(
        self,
        features: list[FeatureSpec],
        entity_field: str | None = None,
        categories: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        names = {spec.name for spec in features}
        self._entity = entity_field if entity_field and entity_field not in names else None
        known = {
            spec.name: tuple(sorted(set(categories[spec.name])))
            for spec in features
            if spec.value_type is str and categories and categories.get(spec.name)
        }
        self._decoders = [_body_decoder(features, self._entity, known)] if known else []
        record_type, plain = _body_decoder(features, self._entity, {})
        self._decoders.append((record_type, plain))
        # Every decoder's records have the same fields in the same order: where each column's values are.
        position = {attribute: i for i, attribute in enumerate(record_type.__struct_fields__)}
        self._layout = [(spec.name, spec.numeric, position[f"f{i}"]) for i, spec in enumerate(features)]
        if self._entity:
            self._layout.append((self._entity, False, position["entity"]))
        # A numeric field's position in the record -> its slice of one record's numbers (dicts keep their order).
        self._numeric = {i: slice(n, n + 1) for n, i in enumerate(i for _, numeric, i in self._layout if numeric)}

    def columns(self, body: bytes, limit: int) -> dict[str, Values] | None:
        """The body's records by column (numbers as float64), or None when the full path must decide."""
        records = self._records(body)
        if records is None or not 0 < len(records) <= limit:
            return None
        columns: dict[str, Values] = {}
        if len(records) == 1:  # one record: its numbers converted together, each column a view of them
            values = astuple(records[0])
            numbers = np.array([values[i] for i in self._numeric], dtype=np.float64)
            for name, numeric, i in self._layout:
                columns[name] = numbers[self._numeric[i]] if numeric else [values[i]]
            return columns
        # One tuple per record (C), transposed into one tuple per field (C): no Python per value.
        fields = list(zip(*map(astuple, records), strict=True))
        for name, numeric, i in self._layout:
            columns[name] = np.array(fields[i], dtype=np.float64) if numeric else list(fields[i])
        return columns

    def _records(self, body: bytes) -> list[Any] | None:
        for _, decoder in self._decoders:
            try:
                return cast(list[Any], decoder.decode(body).records)
            except (msgspec.MsgspecError, ValueError):  # bad JSON or UTF-8, a wrong type, a missing/unknown field
                continue
        return None


def _body_decoder(
    features: list[FeatureSpec], entity: str | None, known: Mapping[str, tuple[str, ...]]
) -> tuple[type[msgspec.Struct], msgspec.json.Decoder[Any]]:
    """The record type and a decoder of `{"records": [...]}` into a list of it; `known`: Literal text fields."""
    fields: list[tuple[str, object] | tuple[str, object, None]] = []  # (name, type[, default]) for msgspec
    for i, spec in enumerate(features):
        kind: object = Literal[known[spec.name]] if spec.name in known else spec.value_type
        fields.append((f"f{i}", kind) if spec.required else (f"f{i}", kind | None, None))  # type: ignore[operator]
    rename = {f"f{i}": s.name for i, s in enumerate(features)}
    if entity:  # the customer's id, never a feature: any JSON scalar, optional
        fields.append(("entity", str | int | float | None, None))
        rename["entity"] = entity
    # Positional attribute names: a feature's name need not be a Python identifier. Not tracked by the
    # garbage collector: a record holds only scalars, so it is never part of a cycle (decodes faster).
    record = msgspec.defstruct(
        "Record",
        fields,
        rename=rename,
        forbid_unknown_fields=True,
        kw_only=True,  # an optional feature may come before a required one
        gc=False,
    )
    # The Struct is built here, at run time: `list[record]` is a type only then, and what is decoded is Any here.
    body = msgspec.defstruct("PredictBody", [("records", list[record])], forbid_unknown_fields=True)  # type: ignore[valid-type]
    return record, msgspec.json.Decoder(body)


class ColumnTypes:
    """Per feature, the value types an /invocations request may carry without a closer look."""

    def __init__(self, features: list[FeatureSpec], entity_field: str | None = None) -> None:
        self.features = features
        self.names = frozenset(f.name for f in features)
        # The customer's id (ENTITY_ID_FIELD) may come beside the features, as MLflow ignores a column it does not
        # know: it is returned too (the canary split reads it), never predicted on. Any JSON scalar, or absent.
        self.entity = entity_field if entity_field and entity_field not in self.names else None
        self.accepted = self.names | {self.entity} if self.entity else self.names
        self.allowed: dict[str, frozenset[type]] | None = {}
        for spec in features:
            kinds = INVOCATION_TYPES.get(spec.type)
            if kinds is None:
                self.allowed = None  # a column type this check does not know: always the full path
                return
            null: set[type] = {NoneType} if spec.type in INVOCATION_NULLABLE and not spec.required else set()
            self.allowed[spec.name] = frozenset(kinds | null)

    def from_records(self, records: object, limit: int) -> dict[str, Values] | None:
        """Columns of a list of records whose fields are exactly the features', else None."""
        if self.allowed is None or not isinstance(records, list) or not 0 < len(records) <= limit:
            return None
        if not all(type(r) is dict for r in records):
            return None
        width = len(self.features)
        if not all(len(r) == width for r in records) and not all(r.keys() <= self.accepted for r in records):
            return None  # an unknown field
        columns: dict[str, Values] = {}
        for spec in self.features:
            name = spec.name
            try:
                values = [r[name] for r in records]
            except KeyError:
                if spec.required:
                    return None
                values = [r.get(name) for r in records]
                if NoneType not in self.allowed[name]:
                    return None
            column = self._column(spec, values)
            if column is None:
                return None
            columns[name] = column
        if self.entity:
            entity = self.entity
            ids = [r.get(entity) for r in records]
            if not set(map(type, ids)) <= ENTITY_TYPES:
                return None
            columns[entity] = ids
        return columns

    def from_split(self, split: object, limit: int) -> dict[str, Values] | None:
        """Columns of `{"columns": [...], "data": [[...], ...]}` naming exactly the features, else None."""
        if self.allowed is None or type(split) is not dict or split.keys() - {"columns", "data", "index"}:
            return None
        names, data = split.get("columns"), split.get("data")
        if type(names) is not list or type(data) is not list or not 0 < len(data) <= limit:
            return None
        try:
            named = set(names)
            if len(named) != len(names) or (named != self.names and named != self.accepted):
                return None
        except TypeError:  # a list or object as a column name: the full path refuses it
            return None
        if not all(type(row) is list and len(row) == len(names) for row in data):
            return None
        position = {name: i for i, name in enumerate(names)}
        columns: dict[str, Values] = {}
        for spec in self.features:
            i = position[spec.name]
            column = self._column(spec, [row[i] for row in data])
            if column is None:
                return None
            columns[spec.name] = column
        if self.entity and self.entity in position:
            i = position[self.entity]
            ids = [row[i] for row in data]
            if not set(map(type, ids)) <= ENTITY_TYPES:
                return None
            columns[self.entity] = ids
        return columns

    def _column(self, spec: FeatureSpec, values: list[object]) -> Values | None:
        kinds = set(map(type, values))
        allowed = cast(dict[str, frozenset[type]], self.allowed)  # not None: from_records and from_split checked
        if not kinds <= allowed[spec.name] or kinds == {NoneType}:  # an all-null column: pandas' dtype differs
            return None
        if not spec.numeric:
            return values
        try:
            return np.array(values, dtype=np.float64)  # None -> NaN; JSON cannot hold NaN or infinity
        except OverflowError:  # an integer beyond float range: the full path words it
            return None
