"""The smoke stage: ask a served version about stored examples and record the verdict."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import httpx

from gates.smoke_checks import (
    Check,
    SmokeReport,
    digest_matches,
    latency_within,
    predictions_match,
    rejects_bad_input,
    version_matches,
)
from pipeline.core.config import SmokeParams

if TYPE_CHECKING:
    from api.release.contract import SmokeExamples
    from gates.smoke_checks import ExpectedAnswers

LATENCY_REQUESTS = 40


def smoke_http(
    base_url: str, version: str, examples: SmokeExamples, params: SmokeParams, target: str, digest: str | None = None
) -> SmokeReport:
    """Run every smoke check against a running API that should serve `version` (with artifact `digest`)."""
    checks: list[Check] = []
    try:
        _run_checks(base_url, version, examples, params, checks, digest)
    except httpx.HTTPError as exc:  # the API went away or broke mid-check: a failure, never a pass
        checks.append(Check("api", False, f"{type(exc).__name__}: {exc}"))
    return SmokeReport(version, target, checks)


def _run_checks(
    base_url: str,
    version: str,
    examples: SmokeExamples,
    params: SmokeParams,
    checks: list[Check],
    digest: str | None,
) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        ready = _wait_ready(http, params.ready_timeout_s)
        checks.append(ready)
        if not ready.passed:
            return
        served = http.get("/model").json()
        checks.append(version_matches(version, served.get("version")))
        if digest is not None:
            checks.append(digest_matches(digest, served.get("artifact_digest")))
        answer = http.post("/predict", json={"records": examples["records"]})
        if answer.status_code != 200:
            checks.append(Check("predictions", False, f"/predict answered {answer.status_code}: {answer.text[:300]}"))
        else:
            body = answer.json()
            # The run's examples carry its answers at training (SmokeExamples makes every key optional).
            expected = cast("ExpectedAnswers", examples)
            checks.append(predictions_match(expected, body["predictions"], body["probabilities"]))
        missing_field = dict(list(examples["records"][0].items())[1:])
        checks.append(
            rejects_bad_input(http.post("/predict", json={"records": [missing_field]}).status_code, "a missing field")
        )
        checks.append(
            rejects_bad_input(
                http.post("/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code,
                "malformed JSON",
            )
        )
        samples = []
        for i in range(LATENCY_REQUESTS):
            record = examples["records"][i % len(examples["records"])]
            started = time.perf_counter()
            http.post("/predict", json={"records": [record]}).raise_for_status()
            samples.append((time.perf_counter() - started) * 1000)
        checks.append(latency_within(samples, params.latency_budget_ms))


def _wait_ready(http: httpx.Client, timeout_s: float) -> Check:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = http.get("/ready", timeout=5)
            if response.status_code == 200:
                return Check("ready", True, "/ready answered 200")
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    return Check("ready", False, f"/ready not 200 within {timeout_s:.0f}s; last answer: {last}")
