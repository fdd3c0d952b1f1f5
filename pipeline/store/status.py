"""The registry's state as one JSON object (docs/DESIGN.md); pipeline/core/status_view.py renders it for people."""

from __future__ import annotations

from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.traffic_reading import UNSIGNED_NOTE, VERIFIED_NOTE, read_traffic
from api.release.verdicts import signature_state
from pipeline.core.config import RegistryParams
from pipeline.core.ledger import read_ledger
from pipeline.core.status_view import anomalies
from pipeline.store import alias_moves, model_versions


def collect(
    client: MlflowClient, reg: RegistryParams, verify_key: Ed25519PublicKey | None = None, canary_alias: str = "canary"
) -> dict[str, Any]:
    """`{"model", "aliases", "versions", "history", "anomalies"}` as the CLI contract lists them, and the canary.

    `canary` is the traffic state as a replica with the same verify key reads it (and why it refuses it);
    `canary_states` says who steers traffic: signed states only, or anyone with registry write access.
    """
    name = reg.model_name
    model = alias_moves.registered_model(client, name)
    aliases = {} if model is None else {alias: str(version) for alias, version in model.aliases.items()}
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    versions: list[dict[str, Any]] = []
    for mv in model_versions.versions(client, name):
        tags = mv.tags
        versions.append(
            {
                "version": str(mv.version),
                "run_id": mv.run_id,
                "metrics": {
                    k.removeprefix(model_versions.METRIC_PREFIX): float(v)
                    for k, v in tags.items()
                    if k.startswith(model_versions.METRIC_PREFIX)
                },
                "gate": tags.get(contract.GATE, "pending"),
                "smoke": tags.get(contract.SMOKE, "pending"),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "git_sha": tags.get(contract.GIT_SHA, ""),
                "data_fingerprint": tags.get(contract.DATA_FINGERPRINT, ""),
                "smoke_target": tags.get(contract.SMOKE_TARGET, ""),
                "registered_at": mv.creation_timestamp,
                "artifact_digest": tags.get(contract.ARTIFACT_DIGEST, ""),
                "smoke_artifact_digest": tags.get(contract.SMOKE_ARTIFACT_DIGEST, ""),
                "image_digest": tags.get(contract.SMOKE_IMAGE_DIGEST, ""),
                "image": model_versions.published_image(mv),
                # MLflow types run_id `str | None`: passed on as it is, as the release check does.
                "signed": signature_state(
                    tags, verify_key, model=name, version=str(mv.version), run_id=cast(str, mv.run_id)
                ),
            }
        )
    tags = {} if model is None else model.tags
    ledger = read_ledger(name, tags, verify_key)
    return {
        "model": name,
        "aliases": dict(sorted(aliases.items())),
        "versions": versions,
        "history": ledger.entries,
        "anomalies": ledger.anomalies + anomalies(aliases, ledger.entries, versions, reg.production_alias),
        "canary": canary_state(tags, aliases.get(canary_alias), name, verify_key, canary_alias),
        "canary_states": VERIFIED_NOTE if verify_key is not None else UNSIGNED_NOTE,
    }


def canary_state(
    tags: dict[str, str], canary: str | None, name: str, verify_key: Ed25519PublicKey | None, alias: str
) -> dict[str, Any] | None:
    """The canary traffic as replicas read it, with the refused state's reason; None when none is written."""
    if tags.get(contract.CANARY_MODE, "off") == "off":
        return None
    traffic = read_traffic(tags, canary, name, verify_key, canary_alias=alias)
    return {**traffic.describe(), "version": traffic.version, "refused": traffic.refused, "problem": traffic.problem}
