"""Hostile input never gets a 5xx, on every model type; answers never echo a payload back."""

import csv
import io
import json
import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.holder import ModelHolder
from api.settings import Settings
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams
from pipeline.core.data import prepare
from pipeline.core.train import train

from ..families import FAMILY_NAMES, quick_params
from .conftest import make_model

MODEL_TYPES = FAMILY_NAMES


@pytest.fixture(scope="module", params=MODEL_TYPES)
def served(request):
    data = prepare(generate_churn(600, 5).astype(str), DataParams())
    result = train(data, quick_params(request.param), test_size=0.25, seed=5)
    record = json.loads(result.split.X_test.head(1).to_json(orient="records"))[0]
    app = create_app(ModelHolder(model=make_model(result)), Settings(max_body_bytes=1_000_000))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, record


HUGE = [1e308, -1e308, 1.7976931348623157e308, 3.5e38, -3.5e38, 5e-324]


@pytest.mark.parametrize("value", HUGE)
def test_huge_finite_numbers_are_answered_or_refused_by_name_never_a_5xx(served, value):
    client, record = served
    answer = client.post("/predict", json={"records": [{**record, "tenure": value}]})
    assert answer.status_code in (200, 422), answer.text
    if answer.status_code == 422:
        assert "'tenure'" in answer.json()["message"] and "too large for this model" in answer.json()["message"]
    invocations = client.post("/invocations", json={"dataframe_records": [{**record, "tenure": value}]})
    assert invocations.status_code in (200, 400), invocations.text
    if invocations.status_code == 400:  # a tree model: float32 (sklearn's refusal, worded as /predict words it)
        assert "too large for this model" in assert_closed(invocations, 400, "tenure")["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"records": [{"tenure": NaN}]}',
        b'{"records": [{"tenure": Infinity}]}',
        b'{"records": [{"tenure": -Infinity}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"records": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        '{"records": [{"gender": "\xe9"}]}'.encode("latin-1"),  # not UTF-8
        '{"records": []}'.encode("utf-16"),
        b"\xff\xfe\x00",
        b"",
        b'{"records": [{"tenure": 1e999}]}',
    ],
)
def test_non_finite_deeply_nested_and_wrongly_encoded_bodies_are_4xx(served, body):
    client, _ = served
    for path in ("/predict", "/invocations"):
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text[:300])
    assert_closed(answer, 400)  # the /invocations answer


def test_error_answers_quote_only_a_short_prefix_of_a_bad_value(served):
    client, record = served
    answer = client.post("/predict", json={"records": [{**record, "tenure": "9" * 500_000}]})
    assert answer.status_code == 422 and len(answer.content) < 1000
    assert "(500002 characters)" in answer.json()["message"]
    many_keys = {f"k{i}": i for i in range(50_000)}
    assert len(client.post("/predict", json=many_keys).content) < 1000


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_parsed(served):
    client, record = served
    big = json.dumps({"records": [record] * 5000}).encode()  # about 2.5 MB, limit 1 MB
    for path in ("/predict", "/invocations"):
        answer = client.post(path, content=big, headers={"content-type": "application/json"})
        assert answer.status_code == 413 and "exceeds the limit of 1000000 bytes" in answer.text

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b" " * 50_000

    assert client.post("/predict", content=chunks()).status_code == 413
    assert client.post("/predict", json={"records": [record]}).status_code == 200


def test_invocations_honours_the_batch_limit(served):
    client, record = served
    answer = client.post("/invocations", json={"dataframe_records": [record] * 101})  # limit 100
    assert answer.status_code == 400 and "exceed the batch limit of 100" in answer.text
    assert client.post("/invocations", json={"dataframe_records": [record] * 100}).status_code == 200


# --- /invocations: as closed as /predict --------------------------------------------------------

# What no answer may show: a traceback, a source file, a server path, an exception class.
LEAK = re.compile(r'Traceback|File "|site-packages|\.py\b|(?<![\w.])/[\w.-]+/|\b\w*(?:Error|Exception)\b:?')
ACCEPTED = ("application/json", "text/csv")
JSON, CSV = "application/json", "text/csv"
MARK = '"@@"'  # where a raw JSON literal goes


def assert_closed(answer, status: int, field: str | None = None) -> dict:
    """The answer has this status, MLflow's error shape minus its stack trace, nothing leaked, the field named."""
    assert answer.status_code == status, answer.text[:400]
    assert not LEAK.search(answer.text), answer.text[:400]
    body = answer.json()
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE"), body
    if field is not None:
        assert f"field {field!r}" in body["message"], body["message"]
    assert answer.headers["content-type"] == "application/json"
    return body


def with_value(record: dict, fmt: str, field: str, literal: str) -> bytes:
    """A one-record body in `fmt` whose `field` holds a raw JSON literal."""
    row = {**record, field: "@@"}
    if fmt == "dataframe_split":
        payload = {"columns": list(row), "data": [list(row.values())]}
    elif fmt == "columnar":  # inputs as {"field": [values]}
        fmt, payload = "inputs", {k: [v] for k, v in row.items()}
    else:
        payload = [row]
    return json.dumps({fmt: payload}).replace(MARK, literal).encode()


def csv_body(header: list[str], rows: list[list]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def csv_with(record: dict, field: str, cell: str) -> bytes:
    return csv_body(list(record), [[cell if k == field else v for k, v in record.items()]])


JSON_FORMATS = ["dataframe_records", "instances", "dataframe_split", "columnar"]
NON_FINITE_JSON = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 5000, "-" + "9" * 5000, "1" + "0" * 400]


@pytest.mark.parametrize("fmt", JSON_FORMATS)
@pytest.mark.parametrize("literal", NON_FINITE_JSON, ids=lambda s: s[:12])
def test_invocations_refuses_non_finite_and_huge_json_numbers_by_field(served, fmt, literal):
    client, record = served
    answer = client.post(
        "/invocations", content=with_value(record, fmt, "tenure", literal), headers={"content-type": JSON}
    )
    message = assert_closed(answer, 400, "tenure")["message"]
    assert "record 0" in message and len(message) < 300


@pytest.mark.parametrize("fmt", JSON_FORMATS)
@pytest.mark.parametrize("value", [[1, 2], [], {"a": 1}, [[72.0]]], ids=["list", "empty-list", "object", "nested"])
@pytest.mark.parametrize("field", ["tenure", "gender"])
def test_invocations_refuses_lists_and_objects_as_values_by_field(served, fmt, value, field):
    client, record = served
    body = with_value(record, fmt, field, json.dumps(value))
    assert_closed(client.post("/invocations", content=body, headers={"content-type": JSON}), 400, field)


def test_invocations_refuses_duplicated_columns_by_name(served):
    client, record = served
    split = {"columns": [*record, "tenure"], "data": [[*record.values(), 5.0]]}
    answers = [client.post("/invocations", json={"dataframe_split": split})]
    one = json.dumps(record)
    for fmt in ("dataframe_records", "instances"):  # a key written twice: Python and orjson keep the last
        body = f'{{"{fmt}": [{one[:-1]}, "tenure": 5.0}}]}}'
        answers.append(client.post("/invocations", content=body, headers={"content-type": JSON}))
    columnar = json.dumps({"inputs": {k: [v] for k, v in record.items()}})
    answers.append(client.post("/invocations", content=columnar[:-2] + ', "tenure": [5.0]}}'))
    answers.append(client.post("/invocations", content=csv_body([*record, "tenure"], [[*record.values(), 5]]),
                               headers={"content-type": CSV}))  # fmt: skip
    for answer in answers:
        assert_closed(answer, 400, "tenure")
    # A key written twice outside the records, too: the body is ambiguous.
    body = b'{"dataframe_records": [], "dataframe_records": [' + one.encode() + b"]}"
    assert "written more than once" in assert_closed(client.post("/invocations", content=body), 400)["message"]


@pytest.mark.parametrize(
    "cell", ["inf", "-inf", "+inf", "INF", "Infinity", "-Infinity", "infinity", "1e400", "-1e400", "9" * 5000]
)
def test_invocations_refuses_non_finite_csv_cells_by_field(served, cell):
    client, record = served
    for field in ("tenure", "TotalCharges"):  # required and optional
        answer = client.post("/invocations", content=csv_with(record, field, cell), headers={"content-type": CSV})
        assert "record 0" in assert_closed(answer, 400, field)["message"]


def test_invocations_refuses_a_number_spelled_as_an_infinite_string_in_json(served):
    client, record = served  # MLflow converts "inf" to a float: refused after its enforcement
    for text in ("inf", "-Infinity", "1e999"):
        answer = client.post("/invocations", json={"dataframe_records": [{**record, "tenure": text}]})
        assert_closed(answer, 400, "tenure")


@pytest.mark.parametrize(
    ("name", "mangle", "words"),
    [
        ("unterminated quote", lambda t: t + '"Male,0.0\n', "quoted field is not closed"),
        ("stray quote", lambda t: t.replace(",No,", ',"No"x,', 1), "malformed CSV"),
        ("long row", lambda t: t.rstrip("\n") + ",extra\n", "fields where the header names"),
        ("short row", lambda t: t.rstrip("\n").rsplit(",", 1)[0] + "\n", "fields where the header names"),
        ("not UTF-8", lambda t: t.encode("utf-16"), "not UTF-8"),
        ("binary", lambda t: bytes(range(256)) * 4, "not UTF-8"),
        ("NUL", lambda t: t.replace("Male", "Ma\x00le", 1), "NUL"),
        ("empty", lambda t: "", "empty"),
    ],
)
def test_invocations_refuses_malformed_csv(served, name, mangle, words):
    client, record = served
    text = csv_body(list(record), [list(record.values())]).decode()
    body = mangle(text)
    answer = client.post("/invocations", content=body if isinstance(body, bytes) else body.encode(),
                         headers={"content-type": CSV})  # fmt: skip
    assert words in assert_closed(answer, 400)["message"], name


def test_invocations_names_the_cell_pandas_cannot_read(served):
    client, record = served
    answer = client.post("/invocations", content=csv_with(record, "MonthlyCharges", "12x"),
                         headers={"content-type": CSV})  # fmt: skip
    assert "'12x' is not a number" in assert_closed(answer, 400, "MonthlyCharges")["message"]
    answer = client.post("/invocations", json={"dataframe_records": [{**record, "tenure": "seventy"}]})
    assert "'seventy' is not a number" in assert_closed(answer, 400, "tenure")["message"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/vnd.apache.parquet",
        "application/octet-stream",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
        "text/csv; header=present",
    ],
)
def test_invocations_answers_415_naming_the_accepted_types_before_parsing(served, content_type):
    client, record = served
    try:  # a real parquet file when pyarrow is here (the dev tools); the serving image has none
        import pandas as pd

        body = pd.DataFrame([record]).to_parquet()
    except ImportError:
        body = b"PAR1" + b"\x00" * 64 + b"PAR1"
    message = assert_closed(client.post("/invocations", content=body, headers={"content-type": content_type}), 415)[
        "message"
    ]
    if ";" not in content_type:
        assert all(accepted in message for accepted in ACCEPTED), message


def test_invocations_body_and_batch_limits_hold_for_every_content_type(served):
    client, record = served
    big = b"PAR1" + b"\x00" * 1_100_000  # limit 1 MB
    for content_type in ("application/vnd.apache.parquet", CSV, JSON, "text/plain"):
        answer = client.post("/invocations", content=big, headers={"content-type": content_type})
        assert answer.status_code == 413, (content_type, answer.text[:200])

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b"a,b\n" * 12_500

    assert client.post("/invocations", content=chunks(), headers={"content-type": CSV}).status_code == 413

    rows = [record] * 101  # limit 100
    bodies = [
        (csv_body(list(record), [list(r.values()) for r in rows]), CSV),
        (json.dumps({"dataframe_split": {"columns": list(record), "data": [list(r.values()) for r in rows]}}), JSON),
        (json.dumps({"inputs": {k: [v] * 101 for k, v in record.items()}}), JSON),
        (json.dumps({"instances": rows}), JSON),
        (json.dumps({"dataframe_records": [{**r, "tenure": None} for r in rows]}), JSON),  # the full path
    ]
    for body, content_type in bodies:
        answer = client.post("/invocations", content=body, headers={"content-type": content_type})
        assert "exceed the batch limit of 100" in assert_closed(answer, 400)["message"], content_type
    assert client.post("/invocations", content=csv_body(list(record), [list(record.values())] * 100),
                       headers={"content-type": CSV}).status_code == 200  # fmt: skip


def test_invocations_refuses_a_request_naming_too_many_columns(served):
    client, record = served
    extra = {f"x{i}": 0 for i in range(1500)}
    answer = client.post("/invocations", content=csv_body([*record, *extra], [[*record.values(), *extra.values()]]),
                         headers={"content-type": CSV})  # fmt: skip
    assert "at most 1000 are read" in assert_closed(answer, 400)["message"]
    answer = client.post("/invocations", json={"dataframe_records": [{**record, **extra}]})
    assert "at most 1000 are read" in assert_closed(answer, 400)["message"]
    # A few columns the model does not read are ignored, as MLflow ignores them.
    answer = client.post("/invocations", json={"dataframe_records": [{**record, "customer_id": "c-1"}]})
    assert answer.status_code == 200


def test_well_formed_csv_is_predicted_as_json_is_in_any_quoting(served):
    client, record = served
    rows = [record, {**record, "Contract": "Month-to-month", "tenure": 1.0}, {**record, "TotalCharges": None}]
    expected = client.post("/invocations", json={"dataframe_records": rows}).json()
    header = list(record)
    for quoting in (csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC):
        out = io.StringIO()
        writer = csv.writer(out, quoting=quoting, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows([[r[k] if r[k] is not None else "" for k in header] for r in rows])
        for content_type in (CSV, "text/csv; charset=utf-8", "Text/CSV"):
            answer = client.post("/invocations", content=out.getvalue(), headers={"content-type": content_type})
            assert answer.status_code == 200 and answer.json() == expected, (quoting, answer.text[:300])
    # A colon inside a value: orjson's answer cannot prove no key was written twice, the full path answers it.
    odd = {**record, "PaymentMethod": "card: visa"}
    assert client.post("/invocations", json={"dataframe_records": [odd]}).status_code == 200


def test_a_csv_nan_is_a_missing_value_as_a_blank_cell_and_json_null_are(served):
    """The decision: pandas reads `nan`/`NaN` (and NA, null, ...) as missing; so does /invocations, as MLflow does."""
    client, record = served
    for field in ("TotalCharges", "tenure"):  # optional, then required (MLflow imputes a missing value in either)
        as_null = client.post("/invocations", json={"dataframe_records": [{**record, field: None}]})
        assert as_null.status_code == 200, as_null.text
        for cell in ("nan", "NaN", "", "NA", "null"):
            answer = client.post("/invocations", content=csv_with(record, field, cell), headers={"content-type": CSV})
            assert answer.status_code == 200 and answer.json() == as_null.json(), (field, cell, answer.text[:200])
    # /predict imputes a missing optional field the same way.
    predicted = client.post("/predict", json={"records": [{**record, "TotalCharges": None}]}).json()["predictions"]
    csv_nan = client.post(
        "/invocations", content=csv_with(record, "TotalCharges", "nan"), headers={"content-type": CSV}
    )
    assert csv_nan.json()["predictions"] == predicted
    # A JSON NaN literal is refused: JSON spells a missing value null.
    answer = client.post("/invocations", content=with_value(record, "dataframe_records", "TotalCharges", "NaN"),
                         headers={"content-type": JSON})  # fmt: skip
    assert "send null for a missing value" in assert_closed(answer, 400, "TotalCharges")["message"]


def test_errors_mlflow_words_are_answered_without_stack_trace_or_class_names(served):
    client, record = served
    cases = [
        (b"{", JSON),
        (b'{"nonsense": []}', JSON),
        (b"[1, 2]", JSON),
        (json.dumps({"dataframe_records": {"a": 1}}).encode(), JSON),
        (json.dumps({"dataframe_records": [1, 2]}).encode(), JSON),
        (json.dumps({"dataframe_split": {"data": [[1]]}}).encode(), JSON),
        (json.dumps({"dataframe_split": {"columns": list(record), "data": [[1]]}}).encode(), JSON),
        (json.dumps({"dataframe_records": [{"gender": "Male"}]}).encode(), JSON),
        (json.dumps({"inputs": {"tenure": [1, 2], "gender": ["Male"]}}).encode(), JSON),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), JSON),
        (csv_body(["gender"], [["Male"]]), CSV),
        (b"\xff\xfe\x00", JSON),
    ]
    for body, content_type in cases:
        assert_closed(client.post("/invocations", content=body, headers={"content-type": content_type}), 400)


def test_a_model_failing_unexpectedly_is_a_closed_400(trained):
    class Failing:
        classes_ = trained.model.classes_

        def predict(self, frame):
            raise RuntimeError("boom in /srv/app/model.py")

    app = create_app(ModelHolder(model=make_model(trained, pipeline=Failing())))
    with TestClient(app, raise_server_exceptions=False) as client:
        record = json.loads(trained.split.X_test.head(1).to_json(orient="records"))[0]
        for body in ({"dataframe_records": [record]}, {"dataframe_records": [{**record, "TotalCharges": None}]}):
            message = assert_closed(client.post("/invocations", json=body), 400)["message"]
            assert "boom" not in message and "unexpected error while evaluating the model" in message


def test_invocations_not_ready_is_a_503_in_mlflows_shape_naming_no_exception():
    holder = ModelHolder()
    with TestClient(create_app(holder), raise_server_exceptions=False) as client:
        answer = client.post("/invocations", json={"dataframe_records": [{}]})
        assert answer.status_code == 503
        assert answer.json() == {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "no model source configured"}
        holder._failed("loading version 3 failed: MlflowException: cannot read /srv/models/3/MLmodel", "failure")
        answer = client.post("/invocations", content=b"a,b\n1,2\n", headers={"content-type": "text/csv"})
        assert answer.status_code == 503 and not LEAK.search(answer.text), answer.text
        assert "loading version 3 failed: cannot read" in answer.json()["message"]
        for path in ("/ready", "/model"):  # operators see why, and no answer names a class or a path
            assert "cannot read" in client.get(path).text and not LEAK.search(client.get(path).text), path
