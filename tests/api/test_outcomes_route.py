"""POST /outcomes: a bearer token, validated rows, one content-named labels segment written before the answer."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.holder import ModelHolder
from api.log_layout import LABEL_SCHEMA
from api.outcomes_route import FUTURE_SLACK, Refused, parse
from api.settings import Settings

from .conftest import make_model
from .test_prediction_log import Served, serving

TOKEN = secrets.token_urlsafe(16)
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FUTURE = "2999-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Served]:
    """One replica with a log folder and the outcomes token."""
    with serving(tmp_path_factory.mktemp("log"), OUTCOMES_TOKEN=TOKEN, MAX_BODY_BYTES="1000000") as served:
        yield served


def labels(folder: Path) -> dict[str, list[dict]]:
    """Every labels segment's rows, by segment name."""
    return {p.name: pq.read_table(p).to_pylist() for p in sorted((folder / "labels").glob("*.parquet"))}


def test_outcomes_need_the_token(api):
    body = {"outcomes": [{"prediction_id": "r-0", "outcome": "Yes"}]}
    with httpx.Client(base_url=api.url) as http:
        # when: posted without a token, with another, with another scheme
        answers = [
            http.post("/outcomes", json=body),
            http.post("/outcomes", json=body, headers={"Authorization": "Bearer not-it"}),
            http.post("/outcomes", json=body, headers={"Authorization": f"Basic {TOKEN}"}),
        ]
    # then: 401, the token never in the answer, nothing written
    assert [a.status_code for a in answers] == [401, 401, 401]
    assert all(TOKEN not in a.text and a.headers["WWW-Authenticate"] == "Bearer" for a in answers)
    assert not (api.log / "labels").exists() or not labels(api.log)


def test_outcomes_are_written_once_as_one_segment_before_the_answer(api):
    # given: outcomes by prediction id and by customer and observation time
    rows = [
        {"prediction_id": "order-1-0", "outcome": "Yes"},
        {"prediction_id": "order-1-1", "outcome": "No", "observed_at": "2026-02-01T10:00:00+02:00"},
        {"entity_id": "c7", "observed_at": "2026-02-01T08:00:00Z", "outcome": "Yes"},
    ]
    with httpx.Client(base_url=api.url) as http:
        # when: they are posted, then posted again in another order
        first = http.post("/outcomes", json={"outcomes": rows}, headers=BEARER)
        # then: accepted, and the segment is there when the answer comes
        assert first.status_code == 200, first.text
        assert first.json()["accepted"] == 3
        written = labels(api.log)
        segment = first.json()["segment"]
        assert segment in written
        again = http.post("/outcomes", json={"outcomes": rows[::-1]}, headers=BEARER)
    # and: the same outcomes are the same object, written once
    assert again.json() == first.json() and labels(api.log) == written
    table = pq.read_table(api.log / "labels" / segment)
    assert table.schema.equals(LABEL_SCHEMA)
    by_id = {(r["prediction_id"], r["entity_id"]): r for r in table.to_pylist()}
    assert by_id[("order-1-0", None)]["outcome"] == "Yes" and by_id[("order-1-0", None)]["observed_at"] is None
    assert by_id[("order-1-1", None)]["observed_at"].isoformat() == "2026-02-01T08:00:00+00:00"
    assert by_id[(None, "c7")]["observed_at"].isoformat() == "2026-02-01T08:00:00+00:00"
    assert {r["source"] for r in by_id.values()} == {"api"} and all(r["received_at"] for r in by_id.values())


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"outcomes": [{"outcome": "Yes"}]}, "row 0: a row needs prediction_id, or entity_id and observed_at"),
        ({"outcomes": [{"entity_id": "c1", "outcome": "Yes"}]}, "row 0: a row needs prediction_id"),
        ({"outcomes": [{"prediction_id": "p-0"}]}, "row 0: outcome is required"),
        ({"outcomes": [{"prediction_id": "p-0", "outcome": "Yes"}, {"prediction_id": 5, "outcome": "No"}]},
         "row 1: prediction_id must be a string"),
        ({"outcomes": [{"prediction_id": "p-0", "outcome": "Yes", "observed_at": "yesterday"}]},
         "row 0: observed_at 'yesterday' is not an ISO-8601 time"),
        ({"outcomes": [{"prediction_id": "p-0", "outcome": "Yes", "label": 1}]}, "row 0: unknown field(s) 'label'"),
        ({"outcomes": ["Yes"]}, "row 0: a row must be an object"),
        ({"outcomes": [{"prediction_id": "p-0", "outcome": "Yes", "observed_at": "2026-01-01T00:00:00Z"},
                       {"entity_id": "c1", "outcome": "No", "observed_at": FUTURE}]},
         "row 1: observed_at 2999-01-01T00:00:00+00:00 is later than now"),
        ({"outcomes": []}, "outcomes is empty"),
        ({"rows": []}, 'the body must be {"outcomes": [rows]}'),
        ({"outcomes": [{"prediction_id": "p", "outcome": "Yes"}] * 10_001}, "10001 rows exceed the limit of 10000"),
    ],
)  # fmt: skip
def test_bad_rows_are_named(api, body, problem):
    # when: a bad body is posted with the token
    answer = httpx.post(api.url + "/outcomes", json=body, headers=BEARER)
    # then: 422 naming the row and its problem
    assert answer.status_code == 422, answer.text
    assert any(problem in d["message"] for d in answer.json()["detail"]), answer.text


def test_a_body_over_the_limit_is_refused(api):
    rows = [{"prediction_id": f"p-{i}", "outcome": "Yes"} for i in range(30_000)]  # about 1.2 MB, limit 1 MB
    answer = httpx.post(api.url + "/outcomes", json={"outcomes": rows}, headers=BEARER)
    assert answer.status_code == 413


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"prediction_log_uri": "LOG"}, "OUTCOMES_TOKEN is not set"),
        ({"outcomes_token": TOKEN}, "PREDICTION_LOG_URI is not set"),
    ],
)
def test_without_a_token_or_a_log_the_route_says_what_is_missing(trained, tmp_path, settings, problem):
    # given: a service missing one of the two settings
    settings = {k: str(tmp_path) if v == "LOG" else v for k, v in settings.items()}
    app = create_app(ModelHolder(model=make_model(trained)), Settings(**settings))
    with TestClient(app) as client:
        # when: outcomes are posted with a token
        answer = client.post("/outcomes", json={"outcomes": [{"prediction_id": "p-0", "outcome": "Yes"}]},
                             headers=BEARER)  # fmt: skip
    # then: 503 naming it
    assert answer.status_code == 503 and problem in answer.json()["detail"]


def test_the_token_is_not_in_the_settings_repr():
    assert TOKEN not in repr(Settings(outcomes_token=TOKEN))


def test_an_observed_at_up_to_five_minutes_ahead_is_accepted_later_refused():
    # given: a post received at noon
    noon = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)

    def body(at: datetime) -> bytes:
        return json.dumps({"outcomes": [{"entity_id": "c1", "outcome": "Yes", "observed_at": at.isoformat()}]}).encode()

    # when/then: an outcome observed 5 minutes ahead (a clock ahead of ours) is taken
    assert parse(body(noon + FUTURE_SLACK), noon)[0].observed_at == noon + FUTURE_SLACK
    # when/then: one a second later is refused 422, naming the row
    with pytest.raises(Refused) as refused:
        parse(body(noon + FUTURE_SLACK + timedelta(seconds=1)), noon)
    assert refused.value.status == 422
    assert refused.value.body["detail"][0]["message"].startswith("row 0: observed_at 2026-02-01T12:05:01+00:00")


def test_a_post_without_the_token_is_refused_before_its_body_is_read(api):
    # given: a connection announcing a 900 kB body (under MAX_BODY_BYTES) and sending none of it, without a token
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(
            b"POST /outcomes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n"
        )
        # when: the server answers (a body it waited for would never come)
        head = connection.recv(4096)
    # then: 401 at once, asking for the bearer token
    assert head.startswith(b"HTTP/1.1 401"), head[:200]
    assert b"www-authenticate: bearer" in head.lower()
