"""MLflow Model Registry adapter, the versions: a model's versions and the verdict tags on them.

The registered model itself (its aliases, their ledger, the traffic tags) is alias_moves.py's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.check import is_not_found, logged_model_files, stored_json
from api.release.redact import redact
from api.release.safe_model import RefusedModel
from api.release.verdicts import image_verdict, release_verdict, verifies
from gates.bootstrap import METRICS  # the metric names, in MLflow and in `status --json`
from gates.release_policy import VersionState
from pipeline.ci.provenance import now
from pipeline.core import feature_training
from pipeline.core.errors import CheckFailed, ConfigError
from pipeline.core.release_keys import sign
from pipeline.store import alias_moves

METRIC_PREFIX = contract.METRIC_TAG_PREFIX
GATE_REPORT = contract.GATE_REPORT


def require_model(client: MlflowClient, name: str) -> None:
    """ConfigError (exit 2) unless the model is registered in this tracking store."""
    if not alias_moves.model_exists(client, name):
        raise ConfigError(f"model {name!r} is not registered in this tracking store")


def versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """All versions of a model, oldest first."""
    if not alias_moves.model_exists(client, name):
        return []
    found = client.search_model_versions(f"name='{name}'")
    return sorted(found, key=lambda v: int(v.version))


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """The model version, or CheckFailed (exit 1) naming it."""
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if is_not_found(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":
            raise CheckFailed(f"model {name!r} has no version {version}") from None
        raise


def version_state(mv: ModelVersion) -> VersionState:
    """The version's gate and smoke verdicts and gate baseline, as the release policy reads them."""
    tags = mv.tags
    return VersionState(
        version=str(mv.version),
        gate=tags.get(contract.GATE, "pending"),
        smoke=tags.get(contract.SMOKE, "pending"),
        baseline=tags.get(contract.GATE_BASELINE) or None,
    )


def run_gate_verdict(client: MlflowClient, name: str, run: Run, verify_key: Ed25519PublicKey | None) -> str:
    """The artifact digest of a run whose gate passed; CheckFailed when the gate verdict does not hold.

    A hand-set `gate=passed` tag is not enough: the stored gate report must say
    passed too, and with a verify key the gate's signature must verify.
    """
    run_id = run.info.run_id
    gate = run.data.tags.get(contract.GATE, "pending")
    if gate != "passed":
        raise CheckFailed(f"run {run_id} has gate result {gate!r}: only runs that passed the gate are registered")
    try:
        report = stored_json(client, run_id, GATE_REPORT)
    except MlflowException:
        report = None
    if report is None:
        raise CheckFailed(f"run {run_id} has no readable gate report ({GATE_REPORT}); run the gate")
    if report.get("verdict") != "passed" or report.get("run_id") != run_id:
        raise CheckFailed(f"run {run_id}: its gate report says {report.get('verdict')!r}, not passed")
    model_id = run.data.tags.get(contract.MODEL_ID)
    if not model_id:
        raise ConfigError(f"run {run_id} has no logged model (tag model_id missing)")

    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        try:
            digest = logged_model_files(client, model_id, run_id, Path(tmp)).digest
        except RefusedModel as exc:
            raise CheckFailed(f"run {run_id}: model refused: {exc}") from None
    if verify_key is not None:
        verdict = release_verdict("gate", run.data.tags, model=name, version="", run_id=run_id, digest=digest)
        if not verifies(verify_key, verdict, run.data.tags.get(contract.GATE_SIGNATURE)):
            raise CheckFailed(f"run {run_id}: the gate verdict is not signed by the release key (or the model changed)")
    return digest


def register(
    client: MlflowClient,
    name: str,
    run_id: str,
    signing_key: Ed25519PrivateKey | None,
    verify_key: Ed25519PublicKey | None,
) -> tuple[str, bool]:
    """Register the run's model once, bound to its artifact digest; returns (version, created)."""
    run = client.get_run(run_id)
    digest = run_gate_verdict(client, name, run, verify_key)
    if not alias_moves.model_exists(client, name):
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return str(min(int(v.version) for v in existing)), False
    sha = run.data.tags.get(contract.GIT_SHA, "unknown")
    tags = {
        contract.GATE: "passed",
        contract.GATE_BASELINE: run.data.tags.get(contract.GATE_BASELINE, ""),
        contract.ARTIFACT_DIGEST: digest,
        contract.GIT_SHA: sha,
        contract.DATA_FINGERPRINT: run.data.tags.get(contract.DATA_FINGERPRINT, ""),
        contract.DATA_ROWS: run.data.tags.get(contract.DATA_ROWS, ""),
        **{f"{METRIC_PREFIX}{k}": str(v) for k, v in run.data.metrics.items() if k in METRICS},
    }
    if run.data.tags.get(contract.SCHEMA_BREAK_ALLOWED):
        tags[contract.SCHEMA_BREAK_ALLOWED] = run.data.tags[contract.SCHEMA_BREAK_ALLOWED]
    # Trained from a feature service: the version carries it, its views, their definitions' hash and the entity frame.
    tags |= {key: run.data.tags[key] for key in feature_training.VERSION_TAGS if run.data.tags.get(key)}
    model_id = run.data.tags[contract.MODEL_ID]
    card = f"Model card: runs:/{run_id}/{contract.MODEL_CARD} (gate report: runs:/{run_id}/{GATE_REPORT})"
    source = f"models:/{model_id}"
    if urlparse(client.tracking_uri).scheme not in ("http", "https", "databricks"):
        # A local store looks a `models:/` source up through MLflow's global tracking URI, not this
        # client's (an MLflow TODO): it gets the logged model's own location (a server resolves it itself).
        source = client.get_logged_model(model_id).artifact_location
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id, description=card)
    version = str(mv.version)
    if signing_key is not None:
        verdict = release_verdict("gate", tags, model=name, version=version, run_id=run_id, digest=digest)
        client.set_model_version_tag(name, version, contract.GATE_SIGNATURE, sign(signing_key, verdict))
    return version, True


def record_smoke(
    client: MlflowClient,
    name: str,
    mv: ModelVersion,
    passed: bool,
    target: str,
    detail: str,
    digest: str | None,
    image_digest: str | None,
    signing_key: Ed25519PrivateKey | None,
) -> None:
    """Store a smoke verdict on the version, bound to the digest it tested; the verdict tag is written last."""
    verdict = "passed" if passed else "failed"
    signature = ""
    if signing_key is not None and digest:
        tags = {**mv.tags, contract.SMOKE_IMAGE_DIGEST: image_digest or ""}
        run_id = cast(str, mv.run_id)  # typed `str | None` by MLflow; versions here come from runs (as in check)
        statement = release_verdict(
            "smoke", tags, model=name, version=str(mv.version), run_id=run_id, digest=digest, verdict=verdict
        )
        signature = sign(signing_key, statement)
    for key, value in {
        contract.SMOKE_SIGNATURE: signature,
        contract.SMOKE_ARTIFACT_DIGEST: digest if passed and digest else "",
        contract.SMOKE_IMAGE_DIGEST: image_digest or "",
        contract.SMOKE_AT: now(),
        contract.SMOKE_TARGET: redact(target),
        contract.SMOKE_DETAIL: redact(detail)[:5000],
        contract.SMOKE: verdict,
    }.items():
        client.set_model_version_tag(name, str(mv.version), key, value)


def record_image(
    client: MlflowClient, name: str, mv: ModelVersion, ref: str, digest: str, signing_key: Ed25519PrivateKey | None
) -> None:
    """Store where the version's smoke-tested image was published; signed like the verdicts."""
    tags = {contract.IMAGE_REF: ref, contract.IMAGE_DIGEST: digest}
    signature = ""
    if signing_key is not None:
        run_id = cast(str, mv.run_id)  # typed `str | None` by MLflow; versions here come from runs (as in check)
        verdict = image_verdict({**mv.tags, **tags}, model=name, version=str(mv.version), run_id=run_id)
        signature = sign(signing_key, verdict)
    for key, value in {**tags, contract.IMAGE_SIGNATURE: signature}.items():
        client.set_model_version_tag(name, str(mv.version), key, value)


def published_image(mv: ModelVersion) -> str:
    """REF@DIGEST of the version's published image, or "" when it was not published."""
    ref, digest = mv.tags.get(contract.IMAGE_REF), mv.tags.get(contract.IMAGE_DIGEST)
    return f"{ref}@{digest}" if ref and digest else ""
