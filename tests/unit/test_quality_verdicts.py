"""The signed quality verdict: its figures covered by the signature, every older signature unchanged."""

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.release import contract
from api.release.verdicts import Verdict, quality_statement, quality_verdict, release_verdict, verifies
from pipeline.core.release_keys import sign

KEY = Ed25519PrivateKey.generate()
TAGS = {contract.ARTIFACT_DIGEST: "sha256:abc", contract.GIT_SHA: "deadbeef", contract.GATE_BASELINE: "1"}
FIGURES = json.dumps({"at": "2026-03-01T00:00:00+00:00", "labelled": 400, "metrics": {"f1": {"live": 0.3}}})


def signed(verdict="failed", figures=FIGURES):
    statement = quality_statement(TAGS, model="m", version="2", run_id="r", verdict=verdict, figures=figures)
    return {**TAGS, contract.QUALITY: verdict, contract.QUALITY_FIGURES: figures,
            contract.QUALITY_SIGNATURE: sign(KEY, statement)}  # fmt: skip


def test_a_verdict_without_figures_signs_the_same_bytes_as_before_figures_existed():
    gate = release_verdict("gate", TAGS, model="m", version="", run_id="r", digest="sha256:abc")
    before = {k: v for k, v in gate.__dict__.items() if k != "figures"}  # the payload as it was written until now
    assert gate.payload() == json.dumps(before, sort_keys=True, separators=(",", ":")).encode()
    assert verifies(KEY.public_key(), gate, sign(KEY, gate))


def test_the_figures_are_part_of_what_is_signed():
    plain = Verdict("quality", "m", "2", "r", "sha256:abc", "failed", "deadbeef")
    assert b"figures" not in plain.payload()
    assert b"labelled" in quality_statement(TAGS, model="m", version="2", run_id="r", verdict="failed",
                                            figures=FIGURES).payload()  # fmt: skip


def test_a_signed_verdict_verifies_and_a_changed_figure_or_verdict_does_not():
    key = KEY.public_key()
    found = quality_verdict(signed(), key, model="m", version="2", run_id="r")
    assert found is not None and found.state == "verified" and found.verdict == "failed"
    assert found.figures["labelled"] == 400
    tampered = {**signed(), contract.QUALITY_FIGURES: FIGURES.replace("400", "4000")}
    assert quality_verdict(tampered, key, model="m", version="2", run_id="r") is None
    flipped = {**signed(), contract.QUALITY: "passed"}
    assert quality_verdict(flipped, key, model="m", version="2", run_id="r") is None
    # bound to the version and its artifact too
    assert quality_verdict(signed(), key, model="m", version="3", run_id="r") is None
    other = Ed25519PrivateKey.generate().public_key()
    assert quality_verdict(signed(), other, model="m", version="2", run_id="r") is None


def test_without_a_verify_key_the_verdict_reads_as_unsigned_and_nothing_reads_as_none():
    found = quality_verdict({**signed(), contract.QUALITY_SIGNATURE: ""}, None, model="m", version="2", run_id="r")
    assert found is not None and found.state == "unsigned"
    assert quality_verdict(TAGS, None, model="m", version="2", run_id="r") is None
    broken = {**TAGS, contract.QUALITY: "failed", contract.QUALITY_FIGURES: "{not json"}
    assert quality_verdict(broken, None, model="m", version="2", run_id="r") is None
