"""The column validator agrees with the API's RecordValidator, row for row: verdict, reason and values.

The reference is what batch scoring did before (each CSV row made into the
record a client would send, then the API's validator on it, one record at a
time); the cells are the API's hostile values and the fuzz tests' generators.
"""

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.model.schema import FeatureSpec, RecordValidator, RequestError
from pipeline.scoring.column_validator import ColumnValidator, client_values
from pipeline.scoring.column_values import NUMBER_TEXT, Coded

from ..api.test_fuzz import CSV_SPELLINGS, LITERALS, anything, cell, numbers
from ..api.test_hostile import HUGE, NON_FINITE_JSON

FEATURES = [
    FeatureSpec("gender", "string"),
    FeatureSpec("tenure", "double"),
    FeatureSpec("SeniorCitizen", "long"),
    FeatureSpec("TotalCharges", "double", required=False),
    FeatureSpec("Contract", "string"),
    FeatureSpec("note", "string", required=False),
    FeatureSpec("paperless", "boolean"),
    FeatureSpec("flag", "boolean", required=False),
]
GOOD = {
    "gender": "Male",
    "tenure": "12",
    "SeniorCitizen": "0",
    "TotalCharges": "1234.5",
    "Contract": "Month-to-month",
    "note": "",
    "paperless": "true",
    "flag": "",
}
VALIDATOR = RecordValidator(FEATURES, max_batch_size=10)

# Cells from the API's hostile tests and the fuzz tests' spellings, plus text a CSV really holds.
HOSTILE_CELLS = [
    *CSV_SPELLINGS,
    *LITERALS,
    *NON_FINITE_JSON,
    *(repr(v) for v in HUGE),
    *(str(v) for v in HUGE),
    "",
    " ",
    "\t",
    "  42  ",
    "\xa042\xa0",
    "\u200b42",
    "\x1c42\x1f",
    "4 2",
    "1_000",
    "0x10",
    "1e",
    "1.e5",
    ".5",
    "+.5",
    "-0",
    "00012",
    "1e-999",
    "1e0001",
    "١٢٣",
    "１２",
    "nan",
    "-nan",
    "NA",
    "null",
    "None",
    "TRUE",
    " false ",
    "True",
    "yes",
    "1",
    "0",
    "=1+1",
    "@SUM(A1)",
    "Fiber optic",
    "  Fiber optic",
    "Ünïcödé ",
    "é",
    "\u3000",
    "a\nb",
    '"quoted"',
    "0.1000000000000000055511151231257827",
    "72853.614332230275",
    "+8252E99",
]


def old_records(frame: pd.DataFrame) -> list[dict]:
    """Batch scoring's records before this change (pipeline/runtime/batch_scoring.py `_records`), verbatim."""
    columns = {}
    for spec in FEATURES:
        if spec.name not in frame.columns:
            continue
        text = frame[spec.name].str.strip()
        if spec.numeric:
            parsed = pd.to_numeric(text, errors="coerce")
            columns[spec.name] = [
                None if t == "" else (float(p) if not math.isnan(p) else t) for t, p in zip(text, parsed, strict=True)
            ]
        elif spec.type == "boolean":
            columns[spec.name] = [None if t == "" else {"true": True, "false": False}.get(t.lower(), t) for t in text]
        else:
            columns[spec.name] = [None if t == "" else t for t in text]
    return [{k: values[i] for k, values in columns.items() if values[i] is not None} for i in range(len(frame))]


def verdicts(records: list[dict]) -> list[tuple[bool, object]]:
    """(accepted, validated record or reason) per record, the API's validator one record at a time."""
    out = []
    for record in records:
        try:
            out.append((True, VALIDATOR.validate({"records": [record]})[0]))
        except RequestError as exc:
            out.append((False, str(exc).replace("record 0: ", "")))
    return out


def column_verdicts(batch: pa.RecordBatch) -> list[tuple[bool, object]]:
    checked = ColumnValidator(FEATURES, VALIDATOR).check(batch)
    good = iter(range(checked.scored))
    out = []
    for row in range(batch.num_rows):
        if checked.good[row]:
            i = next(good)
            out.append((True, {name: value_at(checked.columns[name], i) for name in checked.columns}))
        else:
            out.append((False, checked.reasons[row]))
    return out


def value_at(values, i):
    if isinstance(values, Coded):
        code = values.codes[i]
        return None if code < 0 else values.values[code]
    value = values[i]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def same_values(accepted: dict, checked: dict) -> bool:
    full = {spec.name: accepted.get(spec.name) for spec in FEATURES}
    return full == checked


def assert_agree(rows: list[dict], old_tolerance: bool = True):
    """The column validator's verdicts equal the RecordValidator's on the same rows, and the old ones."""
    frame = pd.DataFrame(rows, columns=list(rows[0]), dtype=object)
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    new_records = [{k: v for k, v in r.items() if v is not None} for r in rows_as_client(batch)]
    expected = verdicts(new_records)
    got = column_verdicts(batch)
    for row, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert want[0] == have[0], (row, rows[row], want, have)
        if want[0]:
            assert same_values(want[1], have[1]), (row, rows[row], want, have)
        else:
            assert want[1] == have[1], (row, rows[row], want, have)
    # The same batch as the CSV reader hands over a repetitive column: dictionary-encoded, each text checked once.
    encoded = pa.RecordBatch.from_arrays([c.dictionary_encode() for c in batch.columns], names=batch.schema.names)
    assert column_verdicts(encoded) == got
    # Before: the same verdicts and reasons; numbers within pandas' rounding (it can be 1 ulp off).
    before = verdicts(old_records(frame.astype(str)))
    for row, (old, have) in enumerate(zip(before, got, strict=True)):
        assert old[0] == have[0], (row, rows[row], old, have)
        if not old[0]:
            assert old[1] == have[1], (row, rows[row], old, have)
        else:
            for name, value in old[1].items():
                mine = have[1][name]
                assert value == mine or math.isclose(value, mine, rel_tol=4e-16), (row, name, value, mine)


def rows_as_client(batch):
    """The records the new code sends for every row (the spec it follows: client_values)."""
    out = [{} for _ in range(batch.num_rows)]
    for spec in FEATURES:
        if spec.name in batch.schema.names:
            for record, value in zip(out, client_values(spec, batch.column(spec.name).to_pylist()), strict=True):
                record[spec.name] = value
    return out


@pytest.mark.parametrize("field", [spec.name for spec in FEATURES])
def test_every_hostile_cell_in_every_field_gets_the_validators_verdict_reason_and_value(field):
    rows = [dict(GOOD)] + [{**GOOD, field: text} for text in HOSTILE_CELLS]
    assert_agree(rows)


def test_bad_rows_anywhere_in_a_batch_keep_their_positions_and_the_good_rows_their_values():
    rows = [dict(GOOD) for _ in range(50)]
    rows[0]["tenure"] = "abc"
    rows[17]["gender"] = " "
    rows[17]["Contract"] = ""
    rows[33]["TotalCharges"] = "1e999"
    rows[49]["paperless"] = "yes"
    rows[20]["tenure"] = " 7 "  # odd but good
    frame = pd.DataFrame(rows, dtype=object)
    checked = ColumnValidator(FEATURES, VALIDATOR).check(pa.RecordBatch.from_pandas(frame, preserve_index=False))
    assert sorted(checked.reasons) == [0, 17, 33, 49] and checked.scored == 46
    assert checked.reasons[0] == "field 'tenure': input should be a valid number, got 'abc'"
    assert checked.reasons[17] == "field 'gender': is missing; field 'Contract': is missing"
    assert checked.reasons[33] == "field 'TotalCharges': input should be a finite number, got inf"
    assert checked.reasons[49] == "field 'paperless': input should be a valid boolean, got 'yes'"
    assert checked.columns["tenure"][18] == 7.0  # rows 0 and 17 before it are out
    assert_agree(rows)


def test_a_missing_optional_column_is_a_missing_field_and_a_missing_required_one_refuses_every_row():
    frame = pd.DataFrame([GOOD, GOOD]).drop(columns=["TotalCharges", "gender"])
    checked = ColumnValidator(FEATURES, VALIDATOR).check(pa.RecordBatch.from_pandas(frame, preserve_index=False))
    assert checked.scored == 0 and set(checked.reasons.values()) == {"field 'gender': is missing"}


def test_dictionary_encoded_and_large_string_columns_read_as_text():
    rows = [dict(GOOD), {**GOOD, "gender": " Female ", "tenure": "x"}, {**GOOD, "Contract": ""}]
    frame = pd.DataFrame(rows, dtype=object)
    plain = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    arrays = [c.dictionary_encode() if i % 2 else c.cast(pa.large_string()) for i, c in enumerate(plain.columns)]
    encoded = pa.RecordBatch.from_arrays(arrays, names=plain.schema.names)
    assert column_verdicts(encoded) == column_verdicts(plain)


def test_a_dictionary_column_with_null_indices_and_unused_entries_reads_as_its_cells():
    rows = [{**GOOD, "tenure": t} for t in ["5", None, " 7 ", "x", "5"]]
    plain = pa.RecordBatch.from_pandas(pd.DataFrame(rows, dtype=object), preserve_index=False)
    tenure = pa.DictionaryArray.from_arrays(
        pa.array([0, None, 2, 3, 0], pa.int8()), pa.array(["5", "not a number", " 7 ", "x", "1e999", None])
    )
    encoded = plain.set_column(plain.schema.get_field_index("tenure"), "tenure", tenure)
    assert column_verdicts(encoded) == column_verdicts(plain)
    assert [ok for ok, _ in column_verdicts(encoded)] == [True, False, True, False, True]  # missing, not a number


def test_a_row_group_dictionary_far_larger_than_its_batch_reads_as_its_cells():
    # Parquet hands every batch its row group's whole dictionary: the work must follow the batch, not the dictionary
    rows = [{**GOOD, "tenure": t, "gender": g} for t, g in [("5", "Male"), ("x", " Female "), (None, None)]]
    plain = pa.RecordBatch.from_pandas(pd.DataFrame(rows, dtype=object), preserve_index=False)
    numbers = [str(i) for i in range(50_000)] + ["x"]
    texts = [f"g{i}" for i in range(50_000)] + ["Male", " Female "]
    tenure = pa.DictionaryArray.from_arrays(pa.array([5, 50_000, None], pa.int32()), pa.array(numbers))
    gender = pa.DictionaryArray.from_arrays(pa.array([50_000, 50_001, None], pa.int32()), pa.array(texts))
    encoded = plain.set_column(plain.schema.get_field_index("tenure"), "tenure", tenure)
    encoded = encoded.set_column(encoded.schema.get_field_index("gender"), "gender", gender)
    assert column_verdicts(encoded) == column_verdicts(plain)


def test_number_grammar_is_what_pyarrow_casts_to_a_finite_number():
    import pyarrow.compute as pc

    for text in ["1", "1.", ".5", "+.5", "-0", "1e5", "1E+05", "00012", "9" * 30]:
        assert NUMBER_TEXT.fullmatch(text) and pc.cast(pa.array([text]), pa.float64())[0].as_py() == float(text)
    for text in ["1e", "e5", ".", "-", "1_000", "0x10", " 1", "1 ", "1,5", "inf", "nan", "١٢٣"]:
        assert not NUMBER_TEXT.fullmatch(text)


# --- generated rows (hypothesis) ----------------------------------------------------------------

ALPHABET = "0123456789+-.eEinfaINFAtrueFALSxX_ ,\t\xa0\u3000é="
texts = st.one_of(
    st.text(alphabet=ALPHABET, max_size=8),
    st.text(max_size=12),
    st.sampled_from(HOSTILE_CELLS),
    numbers.map(repr),
    numbers.map(str),
    st.tuples(numbers, st.one_of(st.none(), st.sampled_from(CSV_SPELLINGS))).map(lambda p: cell(*p)),
    anything.map(lambda v: cell(v, None)),  # the fuzz tests' JSON values as a CSV writer would put them
)


@st.composite
def csv_rows(draw):
    rows = []
    for _ in range(draw(st.integers(1, 12))):
        row = dict(GOOD)
        for name in draw(st.lists(st.sampled_from(list(GOOD)), max_size=3, unique=True)):
            row[name] = draw(texts)
        rows.append(row)
    return rows


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=csv_rows())
def test_generated_csv_rows_get_the_validators_verdicts(rows):
    assert_agree(rows)


# Parquet holds typed values: each is the value a client would send, as it is.
typed_numbers = st.one_of(numbers, st.none(), st.sampled_from([math.nan, math.inf, -math.inf]))


@settings(max_examples=200, deadline=None)
@given(
    tenure=st.lists(typed_numbers, min_size=1, max_size=10),
    ints=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=10, max_size=10),
    flags=st.lists(st.one_of(st.none(), st.booleans()), min_size=10, max_size=10),
    wrong=st.lists(st.one_of(st.none(), st.integers(-5, 5)), min_size=10, max_size=10),
)
def test_typed_parquet_columns_get_the_validators_verdicts(tenure, ints, flags, wrong):
    rows = len(tenure)
    batch = pa.RecordBatch.from_pydict(
        {
            "gender": pa.array(["Male"] * rows),
            "tenure": pa.array([float(v) if isinstance(v, int) else v for v in tenure], type=pa.float64()),
            "SeniorCitizen": pa.array(ints[:rows], type=pa.int64()),
            "TotalCharges": pa.array([float(i) if i is not None else None for i in wrong[:rows]], pa.float32()),
            "Contract": pa.array(wrong[:rows], type=pa.int8()),  # a number where text is due: refused
            "paperless": pa.array(flags[:rows], type=pa.bool_()),
            "flag": pa.array([str(f).lower() if f is not None else "" for f in flags[:rows]]),
        }
    )
    records = []
    for r in range(rows):
        record = {}
        for spec in FEATURES:
            if spec.name in batch.schema.names:
                [value] = client_values(spec, [batch.column(spec.name)[r].as_py()])
                if value is not None:
                    record[spec.name] = value
        records.append(record)
    expected = verdicts(records)
    got = column_verdicts(batch)
    for row, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert want[0] == have[0] and (same_values(want[1], have[1]) if want[0] else want[1] == have[1]), (
            row,
            records[row],
            want,
            have,
        )


def test_hostile_json_values_as_typed_cells():
    """Huge finite numbers are accepted as numbers (a tree model refuses them when it scores); NaN and inf not."""
    values = [*HUGE, math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324]
    batch = pa.RecordBatch.from_pydict(
        {**{k: [v] * len(values) for k, v in GOOD.items() if k != "tenure"}, "tenure": pa.array(values)}
    )
    got = column_verdicts(batch)
    assert [ok for ok, _ in got] == [True] * len(HUGE) + [False] * 3 + [True] * 3
    assert got[len(HUGE)][1] == "field 'tenure': input should be a finite number, got nan"
    assert json.dumps(got[0][1]["tenure"]) == "1e+308"
