"""MLflow Model Registry adapter: versions, verdict tags, aliases and the alias history.

Every alias move happens inside the release lock (pipeline/release_lock.py)
and is a compare-and-set: the alias must still point where the caller checked.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.check import is_not_found, logged_model_files
from api.release.redact import redact
from api.release.safe_model import RefusedModel
from api.release.traffic import Traffic
from api.release.verdicts import image_verdict, release_verdict, verifies
from gates.bootstrap import METRICS  # the metric names, in MLflow and in `status --json`
from gates.release_policy import VersionState
from pipeline.ci.provenance import actor, git_sha, now
from pipeline.core import interrupts, ledger
from pipeline.core.errors import CheckFailed, ConfigError
from pipeline.core.release_keys import sign

METRIC_PREFIX = contract.METRIC_TAG_PREFIX
GATE_REPORT = contract.GATE_REPORT


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias, as the ledger records it."""

    alias: str
    from_version: str | None
    to_version: str
    at: str
    reason: str
    git_sha: str
    by: str
    kind: str  # promote | rollback | register: what moved it
    image: str = ""  # REF@DIGEST the version was published as, when it was

    def to_json(self) -> dict[str, Any]:
        """The move as a ledger entry's fields (`from` and `to` named as in the entry)."""
        out = asdict(self)
        out["from"], out["to"] = out.pop("from_version"), out.pop("to_version")
        return out


def registered_model(client: MlflowClient, name: str) -> RegisteredModel | None:
    """The registered model, or None when it does not exist (one registry call)."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise


def model_exists(client: MlflowClient, name: str) -> bool:
    """Whether the model is registered."""
    return registered_model(client, name) is not None


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Every alias of the model and the version it points at."""
    model = registered_model(client, name)
    return {} if model is None else {alias: str(version) for alias, version in model.aliases.items()}


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None."""
    return aliases(client, name).get(alias)


def versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """All versions of a model, oldest first."""
    if not model_exists(client, name):
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
        report = json.loads(Path(client.download_artifacts(run_id, GATE_REPORT)).read_text())
    except (MlflowException, OSError, ValueError):
        raise CheckFailed(f"run {run_id} has no readable gate report ({GATE_REPORT}); run the gate") from None
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
    if not model_exists(client, name):
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


def move_alias(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str | None,
    reason: str,
    expected: str | None,
    kind: str,
    image: str = "",
    signing_key: Ed25519PrivateKey | None = None,
) -> AliasMove | None:
    """Compare-and-set: point `alias` at `version` (None: remove it) only if it still points at `expected`.

    Call it holding the release lock. The alias and its ledger entry (a
    removal is a move to "") are written together: a SIGINT or SIGTERM waits
    until both are. None when the alias already points at `version`.
    """
    model = registered_model(client, name)
    before = None if model is None else (str(model.aliases[alias]) if alias in model.aliases else None)
    if before == version:
        return None
    if before != expected:
        raise CheckFailed(
            f"@{alias} moved from {expected or 'nothing'} to {before or 'nothing'} while this step ran; nothing changed"
        )
    tags = {} if model is None else model.tags
    last = max((k for k in tags if k.startswith(contract.HISTORY_PREFIX)), default=None)
    move = AliasMove(alias, before, version or "", now(), redact(reason), git_sha(), actor(), kind, image)
    key = ledger.entry_key(last, time.time_ns(), secrets.token_hex(3))
    entry = ledger.make_entry(name, key, move.to_json(), tags.get(last) if last else None, signing_key)
    with interrupts.deferred():
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)
        client.set_registered_model_tag(name, key, entry)
    return move


def set_traffic(client: MlflowClient, name: str, traffic: Traffic, signing_key: Ed25519PrivateKey | None) -> None:
    """Write how replicas split traffic with the canary, signed when a key is set (call it holding the lock)."""
    signature = sign(signing_key, traffic.verdict(name)) if signing_key is not None else ""
    with interrupts.deferred():
        for key, value in {**traffic.tags(), contract.CANARY_SIGNATURE: signature}.items():
            client.set_registered_model_tag(name, key, value)


def read_history(client: MlflowClient, name: str, verify_key: Ed25519PublicKey | None = None) -> ledger.Ledger:
    """The model's ledger: accepted moves, oldest first, and its anomalies."""
    model = registered_model(client, name)
    return ledger.read_ledger(name, {} if model is None else model.tags, verify_key)


def history(client: MlflowClient, name: str, verify_key: Ed25519PublicKey | None = None) -> list[dict[str, Any]]:
    """Every accepted alias move, oldest first."""
    return read_history(client, name, verify_key).entries


def require_model(client: MlflowClient, name: str) -> None:
    """ConfigError (exit 2) unless the model is registered in this tracking store."""
    if not model_exists(client, name):
        raise ConfigError(f"model {name!r} is not registered in this tracking store")
