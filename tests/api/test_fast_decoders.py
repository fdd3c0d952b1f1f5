"""The fast path takes only what the full path would accept unchanged; everything else goes the full way."""

import json

import numpy as np
import pytest

from api.model.fast_decoders import ColumnTypes, RecordDecoder
from api.model.schema import FeatureSpec, RecordValidator, RequestError

FEATURES = [
    FeatureSpec("tenure", "double"),
    FeatureSpec("Total Charges", "double", required=False),  # not a Python identifier, optional
    FeatureSpec("calls", "long"),
    FeatureSpec("Contract", "string"),
]
GOOD = {"tenure": 3, "Total Charges": 10.5, "calls": 2, "Contract": "One year"}


def full_path(records):
    validator = RecordValidator(FEATURES, 100)
    return validator.columns(validator.validate({"records": records}))


def fast_path(records, limit=100):
    return RecordDecoder(FEATURES).columns(json.dumps({"records": records}).encode(), limit)


def test_well_formed_records_give_the_columns_the_full_path_gives():
    records = [GOOD, {**GOOD, "Total Charges": None}, {k: v for k, v in GOOD.items() if k != "Total Charges"}]
    fast, full = fast_path(records), full_path(records)
    assert list(fast) == list(full)
    for name, values in full.items():
        expected = [np.nan if v is None else v for v in values]
        assert np.asarray(fast[name], dtype=object).tolist() == pytest.approx(expected, nan_ok=True), name


@pytest.mark.parametrize(
    "records",
    [
        [{**GOOD, "tenure": True}],  # a bool is not a number to pydantic
        [{**GOOD, "tenure": "3"}],
        [{**GOOD, "tenure": None}],  # required
        [{k: v for k, v in GOOD.items() if k != "calls"}],
        [{**GOOD, "extra": 1}],
        [{**GOOD, "tenure": 10**400}],
        [],
        [GOOD] * 101,  # over the limit
        ["not a record"],
    ],
    ids=["bool", "string-number", "null-required", "missing", "unknown-field", "huge-int", "empty", "limit", "str"],
)
def test_anything_else_is_left_to_the_full_path(records):
    assert fast_path(records) is None
    with pytest.raises(RequestError):
        full_path(records)


def test_bodies_that_are_not_json_or_not_utf8_are_left_to_the_full_path():
    decoder = RecordDecoder(FEATURES)
    assert decoder.columns(b"[" * 100_000, 100) is None
    assert decoder.columns('{"records": [{"Contract": "\xe9"}]}'.encode("latin-1"), 100) is None
    assert decoder.columns(b'{"records": [], "params": {}}', 100) is None


def test_invocations_take_only_values_mlflow_passes_through_unchanged():
    types = ColumnTypes(FEATURES)
    assert types.from_records([GOOD, {**GOOD, "Total Charges": None}], 10) is not None
    assert types.from_records([{**GOOD, "calls": 2.0}], 10) is None  # a float in a long column: MLflow decides
    assert types.from_records([{**GOOD, "Total Charges": None}], 10) is None  # an all-null column
    assert types.from_records([{**GOOD, "Contract": None}], 10) is None
    split = {"columns": list(GOOD), "data": [list(GOOD.values())]}
    reordered = {"columns": list(GOOD)[::-1], "data": [list(GOOD.values())[::-1]]}
    assert _same(types.from_split(split, 10), types.from_split(reordered, 10))
    assert types.from_split({**split, "columns": [*GOOD, "extra"], "data": [[*GOOD.values(), 1]]}, 10) is None
    assert types.from_split({**split, "data": [list(GOOD.values())[:-1]]}, 10) is None  # a short row
    assert types.from_split(split, 0) is None


def _same(a, b):
    return all(np.asarray(a[k], dtype=object).tolist() == np.asarray(b[k], dtype=object).tolist() for k in a)


@pytest.mark.parametrize("contract", ["One year", "Decade-long"], ids=["known", "unseen"])
def test_known_categories_change_nothing_the_decoder_answers(contract):
    # Given a decoder told the model's categories, and one that is not
    records = [GOOD, {**GOOD, "Contract": contract, "Total Charges": None}]
    body = json.dumps({"records": records}).encode()
    told = RecordDecoder(FEATURES, categories={"Contract": ["One year", "Two year"]})
    # When both decode a body with a known or an unseen category
    fast, plain = told.columns(body, 100), RecordDecoder(FEATURES).columns(body, 100)
    # Then the columns are the same
    assert fast is not None and plain is not None and list(fast) == list(plain)
    for name, values in plain.items():
        if isinstance(values, np.ndarray):
            assert np.array_equal(fast[name], values, equal_nan=True), name
        else:
            assert fast[name] == values, name


@pytest.mark.parametrize(
    "records", [[{**GOOD, "Contract": 3}], [{**GOOD, "extra": 1}], []], ids=["int", "extra", "empty"]
)
def test_known_categories_still_leave_anything_else_to_the_full_path(records):
    told = RecordDecoder(FEATURES, categories={"Contract": ["One year"]})
    assert told.columns(json.dumps({"records": records}).encode(), 100) is None
