"""The pieces of /invocations' input checks on their own: messages, content types, where a problem is."""

import pytest

from api.model.invocation_input import FALLBACK, Refusal, media_type, safe_message
from api.model.invocation_json import read_json
from api.model.schema import FeatureSpec

FEATURES = [
    FeatureSpec("tenure", "double"),
    FeatureSpec("gender", "string"),
    FeatureSpec("TotalCharges", "double", False),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Failed to convert column tenure to type 'float64'. Error: 'ValueError(\"could not convert 'x'\")'",
            "Failed to convert column tenure to type 'float64': '(\"could not convert 'x'\")'",
        ),
        (
            "mlflow.exceptions.MlflowException: Model is missing inputs ['tenure'].",
            "Model is missing inputs ['tenure'].",
        ),
        ("_csv.Error: line contains NUL", "line contains NUL"),
        ('Traceback (most recent call last):\n  File "/srv/app/x.py", line 3, in f', FALLBACK),
        ("first line\nsecond line with /etc/passwd", "first line"),
        ("cannot read /srv/models/3/MLmodel", "cannot read …"),
        ("from s3://user:secret@bucket", "from s3://***@bucket"),
        ("Error tokenizing data", "Error tokenizing data"),  # a word, not a class
        ("", FALLBACK),
        ("KeyError", FALLBACK),
    ],
)
def test_safe_message_keeps_the_words_and_drops_classes_paths_tracebacks_and_credentials(text, expected):
    assert safe_message(text) == expected


def test_safe_message_is_short():
    assert len(safe_message("x" * 10_000)) <= 301


@pytest.mark.parametrize(
    ("content_type", "mime"),
    [
        ("application/json", "application/json"),
        ("application/json; charset=utf-8", "application/json"),
        ("Application/JSON; charset=UTF-8", "application/json"),
        ("text/csv", "text/csv"),
        ('text/csv; charset="utf-8"', "text/csv"),
        ("text/csv;", "text/csv"),
    ],
)
def test_media_type_accepts_json_and_csv_in_utf8(content_type, mime):
    assert media_type(content_type) == mime


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        ("application/vnd.apache.parquet", "does not read parquet"),
        ("text/plain", "'text/plain' is not accepted"),
        ("application/json; charset=latin-1", "charset 'latin-1'"),
        ("text/csv; header=present", "parameter 'header'"),
        ("", "'' is not accepted"),
    ],
)
def test_media_type_refuses_anything_else_with_415(content_type, words):
    with pytest.raises(Refusal) as refused:
        media_type(content_type)
    assert refused.value.status == 415 and words in str(refused.value)
    assert refused.value.answer() == {"error_code": "BAD_REQUEST", "message": str(refused.value)}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"dataframe_split": {"columns": ["gender", "tenure"], "data": [["a", 1], ["b", NaN]]}}',
            "record 1: field 'tenure'",
        ),
        (
            b'{"dataframe_split": {"columns": ["tenure"], "data": [[1]], "index": [Infinity]}}',
            "at dataframe_split.index[0]",
        ),
        (b'{"inputs": {"tenure": [1, 2, -Infinity]}}', "record 2: field 'tenure'"),
        (
            b'{"instances": [{"tenure": 1}, {"tenure": 1, "tenure": 2, "tenure": 3}]}',
            "record 1: field 'tenure': is written",
        ),
        (b'{"dataframe_records": [], "params": {"p": 1e999}}', "at params.p"),
        (b'{"dataframe_records": [{"gender": "a"}], "dataframe_records": []}', "key 'dataframe_records' is written"),
        (b"NaN", "the body: 'NaN' is not a number"),
        (b'{"dataframe_records": [{"tenure": 1}], "inputs": []}', "exactly one of the keys"),
        (b'{"inputs": {"tenure": [1, 2], "gender": ["a"]}}', "field 'tenure' has 2 values, field 'gender' 1"),
    ],
)
def test_read_json_names_where_a_problem_is(body, message):
    with pytest.raises(Refusal) as refused:
        read_json(body, FEATURES, limit=10)
    assert message in str(refused.value), str(refused.value)


def test_read_json_passes_what_mlflow_should_decide_unchanged():
    body = b'{"dataframe_records": [{"tenure": "5", "gender": 3, "other": [1, {"a": 2}]}], "params": {"p": 1}}'
    assert read_json(body, FEATURES, limit=10) == {
        "dataframe_records": [{"tenure": "5", "gender": 3, "other": [1, {"a": 2}]}],
        "params": {"p": 1},
    }
