"""MLflow Model Registry adapter, the registered model: its aliases, their compare-and-set moves, the ledger.

Every alias move happens inside the release lock (pipeline/store/release_lock.py)
and is a compare-and-set: the alias must still point where the caller checked.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.check import is_not_found
from api.release.redact import redact
from api.release.traffic import Rollout, Traffic
from pipeline.ci.provenance import actor, git_sha, now
from pipeline.core import interrupts, ledger
from pipeline.core.errors import CheckFailed
from pipeline.core.release_keys import sign


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
    kind: str  # promote | rollback | register | rollout: what moved it
    image: str = ""  # REF@DIGEST the version was published as, when it was
    rollout: str = ""  # the rollout's id (kind rollout): its start entry, then its end entry, name it

    def to_json(self) -> dict[str, Any]:
        """The move as a ledger entry's fields (`from` and `to` named as in the entry; no empty rollout id)."""
        out = asdict(self)
        out["from"], out["to"] = out.pop("from_version"), out.pop("to_version")
        if not out["rollout"]:
            del out["rollout"]
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
    move = AliasMove(alias, before, version or "", now(), redact(reason), git_sha(), actor(), kind, image)

    def apply() -> None:
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)

    _append(client, name, {} if model is None else model.tags, move, signing_key, apply)
    return move


def _append(
    client: MlflowClient,
    name: str,
    tags: dict[str, str],
    move: AliasMove,
    signing_key: Ed25519PrivateKey | None,
    apply: Callable[[], object] | None = None,
) -> tuple[str, str]:
    """Write the move's ledger entry, chained to the last one, together with `apply` (the alias change itself).

    Returns the entry's tag key and stored text. A SIGINT or SIGTERM waits until both are written.
    """
    last = max((k for k in tags if k.startswith(contract.HISTORY_PREFIX)), default=None)
    key = ledger.entry_key(last, time.time_ns(), secrets.token_hex(3))
    entry = ledger.make_entry(name, key, move.to_json(), tags.get(last) if last else None, signing_key)
    with interrupts.deferred():
        if apply is not None:
            apply()
        client.set_registered_model_tag(name, key, entry)
    return key, entry


def start_rollout(
    client: MlflowClient, name: str, alias: str, version: str, reason: str, signing_key: Ed25519PrivateKey | None
) -> Rollout:
    """Point the canary alias at `version` with a ledger entry naming a new rollout id; the state's binding.

    Call it holding the release lock. The entry is written even when the alias
    already points there (a move from the version to itself): every rollout
    has a start entry of its own, which its traffic states name.
    """
    model = registered_model(client, name)
    before = None if model is None else (str(model.aliases[alias]) if alias in model.aliases else None)
    move = AliasMove(alias, before, version, now(), redact(reason), git_sha(), actor(), "rollout",
                     rollout=secrets.token_hex(8))  # fmt: skip
    apply = None if before == version else (lambda: client.set_registered_model_alias(name, alias, version))
    key, text = _append(client, name, {} if model is None else model.tags, move, signing_key, apply)
    return Rollout(move.rollout, move.at, key, ledger.text_hash(text))


def end_rollout(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str,
    rollout: str | None,
    reason: str,
    signing_key: Ed25519PrivateKey | None,
) -> None:
    """The canary answers nothing again, its alias goes, and the ledger says the rollout ended (call it locked).

    With the rollout's id, an end entry naming it is written whatever the alias
    points at now: replicas refuse any state of an ended rollout. When the
    alias was moved elsewhere meanwhile it stays, and the entry records it in
    place (from and to where it is), so the ledger still explains it.
    """
    set_traffic(client, name, Traffic(), signing_key)
    model = registered_model(client, name)
    before = None if model is None else (str(model.aliases[alias]) if alias in model.aliases else None)
    if before != version and not rollout:
        return
    to = "" if before == version else (before or "")
    move = AliasMove(alias, before, to, now(), redact(reason), git_sha(), actor(), "rollout", rollout=rollout or "")
    apply = (lambda: client.delete_registered_model_alias(name, alias)) if before == version else None
    _append(client, name, {} if model is None else model.tags, move, signing_key, apply)


def set_traffic(client: MlflowClient, name: str, traffic: Traffic, signing_key: Ed25519PrivateKey | None) -> None:
    """Write how replicas split traffic with the canary, signed when a key is set (call it holding the lock).

    The signature covers the state and its binding (rollout id, start, ledger entry, expiry): see
    api/release/traffic.py. Every tag is rewritten, so no field of an earlier state survives.
    """
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
