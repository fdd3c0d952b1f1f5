"""Release verdicts: signed statements that a version passed its gate or smoke, and the check.

A verdict is signed (Ed25519) over model name, version, run id, artifact
digest, verdict and git sha, plus what promote and publish trust beside it:
the gate's baseline version and the smoke's image ID; a quality verdict also covers its
figures (live metrics, intervals, labelled rows, the gate's figures). With a verify key, only verdicts that verify
count; without one, the verdict tags are trusted and every surface says
"unsigned". Keys come as PEM text, or as the path of a PEM file.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from api.release import contract

SIGNING_KEY_VAR = "RELEASE_SIGNING_KEY"
VERIFY_KEY_VAR = "RELEASE_VERIFY_KEY"


class BadKey(ValueError):
    """A key variable holds something that is not an Ed25519 PEM key."""


@dataclass(frozen=True)
class Verdict:
    """What a release signature covers: the version, its artifact digest and the verdict on it."""

    kind: str  # gate | smoke | image | rollout | quality
    model: str
    version: str  # "" for a run's gate verdict, before registration
    run_id: str
    artifact_digest: str
    verdict: str  # passed | failed (quality: or inconclusive); for an image, the published REF@DIGEST
    git_sha: str
    baseline: str = ""  # gate: the production version it compared against (gate.baseline_version)
    image: str = ""  # smoke: the image ID it ran (smoke.image_digest), "" for a process
    figures: str = ""  # quality: the figures behind the verdict (quality.figures, JSON), "" for the others

    def payload(self) -> bytes:
        """The bytes signed and verified: every field, as compact JSON with sorted keys.

        `figures` is left out when empty, so signatures made before it existed still verify.
        """
        fields = {k: v for k, v in self.__dict__.items() if k != "figures" or v}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


# (kind, signature tag, verdict tag) of the verdicts a release carries, gate first.
_SIGNED = (("gate", contract.GATE_SIGNATURE, contract.GATE), ("smoke", contract.SMOKE_SIGNATURE, contract.SMOKE))


def read_pem(value: str) -> bytes:
    """The PEM bytes of a key given as PEM text or as the path of a PEM file; BadKey when it is neither."""
    text = value.strip()
    if not text.startswith("-----BEGIN"):
        try:
            text = Path(text).read_text().strip()
        except OSError as exc:
            raise BadKey(f"not PEM text and not a readable file ({exc.strerror})") from None
    return text.encode()


def load_verify_key(value: str) -> Ed25519PublicKey:
    """The Ed25519 public key in `value` (PEM text or a PEM file's path); BadKey otherwise."""
    try:
        key = serialization.load_pem_public_key(read_pem(value))
    except (ValueError, TypeError) as exc:
        raise BadKey(f"{VERIFY_KEY_VAR} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadKey(f"{VERIFY_KEY_VAR} is not an Ed25519 key")
    return key


def verifies(key: Ed25519PublicKey, verdict: Verdict, signature: str | None) -> bool:
    """True when `signature` (base64) is `key`'s signature over the verdict's payload."""
    if not signature:
        return False
    try:
        key.verify(base64.b64decode(signature, validate=True), verdict.payload())
    except (InvalidSignature, ValueError):
        return False
    return True


def refusal(
    tags: dict[str, str],
    *,
    model: str,
    version: str,
    run_id: str,
    digest: str,
    verify_key: Ed25519PublicKey | None,
    require_smoke: bool = True,
) -> str | None:
    """Why a version may not serve (None: it may), from its tags and its artifact's digest now.

    `require_smoke=False` is for a replica pinned to one version, as the smoke
    test starts it: that version has passed its gate but not yet smoke.
    """
    if tags.get(contract.GATE) != "passed":
        return f"gate {tags.get(contract.GATE, 'pending')}"
    if require_smoke and tags.get(contract.SMOKE) != "passed":
        return f"smoke {tags.get(contract.SMOKE, 'pending')}"
    recorded = tags.get(contract.ARTIFACT_DIGEST)
    if not recorded:
        return "no artifact digest recorded at registration"
    if recorded != digest:
        return f"artifact changed since it was gated (digest {digest[:19]}…, recorded {recorded[:19]}…)"
    smoked = tags.get(contract.SMOKE_ARTIFACT_DIGEST)
    if require_smoke and smoked != digest:
        return f"artifact differs from what smoke tested ({(smoked or 'none')[:19]}…)"
    if verify_key is None:
        return None
    for kind, tag, _ in _SIGNED[: 2 if require_smoke else 1]:
        verdict = release_verdict(kind, tags, model=model, version=version, run_id=run_id, digest=digest)
        if not verifies(verify_key, verdict, tags.get(tag)):
            return f"{kind} verdict is not signed by the release key"
    return None


def release_verdict(
    kind: str, tags: dict[str, str], *, model: str, version: str, run_id: str, digest: str, verdict: str = "passed"
) -> Verdict:
    """The statement a version's gate or smoke signature covers, read from its tags."""
    return Verdict(
        kind,
        model,
        version,
        run_id,
        digest,
        verdict,
        tags.get(contract.GIT_SHA, ""),
        baseline=tags.get(contract.GATE_BASELINE, "") if kind == "gate" else "",
        image=tags.get(contract.SMOKE_IMAGE_DIGEST, "") if kind == "smoke" else "",
    )


def image_verdict(tags: dict[str, str], *, model: str, version: str, run_id: str) -> Verdict:
    """The statement an image signature covers: this version's artifact was published as REF@DIGEST."""
    published = f"{tags.get(contract.IMAGE_REF, '')}@{tags.get(contract.IMAGE_DIGEST, '')}"
    digest, sha = tags.get(contract.ARTIFACT_DIGEST, ""), tags.get(contract.GIT_SHA, "")
    return Verdict("image", model, version, run_id, digest, published, sha)


def image_refusal(
    tags: dict[str, str], verify_key: Ed25519PublicKey | None, *, model: str, version: str, run_id: str
) -> str | None:
    """Why the image recorded on a version may not be released (None: it may, or none was published)."""
    if not tags.get(contract.IMAGE_DIGEST) or verify_key is None:
        return None
    verdict = image_verdict(tags, model=model, version=version, run_id=run_id)
    if not verifies(verify_key, verdict, tags.get(contract.IMAGE_SIGNATURE)):
        return "the published image (image.ref, image.digest) is not signed by the release key"
    return None


def signature_state(
    tags: dict[str, str], verify_key: Ed25519PublicKey | None, model: str, version: str, run_id: str
) -> str:
    """A version's signature state, from its tags alone: unsigned, signed (not verified), verified or invalid."""
    signed = [(kind, tag, verdict) for kind, tag, verdict in _SIGNED if tags.get(tag)]
    if not signed:
        return "unsigned"
    if verify_key is None:
        return "signed (not verified)"
    digest = tags.get(contract.ARTIFACT_DIGEST, "")
    for kind, tag, verdict_tag in signed:
        verdict = release_verdict(
            kind, tags, model=model, version=version, run_id=run_id, digest=digest, verdict=tags.get(verdict_tag, "")
        )
        if not verifies(verify_key, verdict, tags[tag]):
            return "invalid"
    return "verified"


@dataclass(frozen=True)
class QualityVerdict:
    """A version's live quality verdict as its tags state it, and whether a key vouches for it."""

    verdict: str  # passed | failed | inconclusive
    figures: dict[str, Any]  # what quality.figures holds (pipeline/stages/quality.py writes it)
    state: str  # verified | unsigned (no verify key: trusted, as every verdict is then)


def quality_statement(
    tags: dict[str, str], *, model: str, version: str, run_id: str, verdict: str, figures: str
) -> Verdict:
    """The statement a quality signature covers: the verdict and its figures, bound to the version's artifact."""
    digest, sha = tags.get(contract.ARTIFACT_DIGEST, ""), tags.get(contract.GIT_SHA, "")
    return Verdict("quality", model, version, run_id, digest, verdict, sha, figures=figures)


def quality_verdict(
    tags: dict[str, str], verify_key: Ed25519PublicKey | None, *, model: str, version: str, run_id: str
) -> QualityVerdict | None:
    """The version's quality verdict, or None: none recorded, unreadable, or (with a key) not signed by it.

    With a verify key only a verdict that verifies counts (what /metrics may show); without one it is
    returned as "unsigned".
    """
    verdict, text = tags.get(contract.QUALITY), tags.get(contract.QUALITY_FIGURES, "")
    if verdict not in ("passed", "failed", "inconclusive"):
        return None
    try:
        figures = json.loads(text)
    except ValueError:
        return None
    if not isinstance(figures, dict):
        return None
    if verify_key is None:
        return QualityVerdict(verdict, figures, "unsigned")
    statement = quality_statement(tags, model=model, version=version, run_id=run_id, verdict=verdict, figures=text)
    if not verifies(verify_key, statement, tags.get(contract.QUALITY_SIGNATURE)):
        return None
    return QualityVerdict(verdict, figures, "verified")
