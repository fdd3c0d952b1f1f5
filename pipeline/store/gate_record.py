"""The gate's verdict written on the candidate run: its reports as artifacts, then its tags, the verdict last."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.verdicts import release_verdict
from gates.report import GateReport
from pipeline.core.release_keys import sign


def record_gate(
    client: MlflowClient,
    model: str,
    run: Run,
    report: GateReport,
    card: str,
    baseline: str | None,
    breaking: list[str],
    digest: str,
    signing_key: Ed25519PrivateKey | None,
) -> None:
    """The report and model card as run artifacts, the baseline and schema-break tags, then the verdict.

    The verdict tag comes last, signed first when a key is set: a run never
    says passed before its report and signature are stored.
    """
    run_id = run.info.run_id
    client.log_text(run_id, report.to_json(), contract.GATE_REPORT)
    client.log_text(run_id, report.to_markdown(), "gate/gate.md")
    client.log_text(run_id, card, contract.MODEL_CARD)
    client.set_tag(run_id, contract.GATE_BASELINE, baseline or "")
    if breaking:
        client.set_tag(run_id, contract.SCHEMA_BREAK_ALLOWED, "; ".join(breaking)[:5000])
    if signing_key is not None:
        tags = {**run.data.tags, contract.GATE_BASELINE: baseline or "", contract.GIT_SHA: report.git_sha}
        verdict = release_verdict(
            "gate", tags, model=model, version="", run_id=run_id, digest=digest, verdict=report.verdict
        )
        client.set_tag(run_id, contract.GATE_SIGNATURE, sign(signing_key, verdict))
    client.set_tag(run_id, contract.GATE, report.verdict)
