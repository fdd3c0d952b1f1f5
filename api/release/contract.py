"""Names shared by the pipeline (which writes them) and the service (which reads them).

The tag contract of docs/DESIGN.md: change a name here and both sides follow.
"""

from __future__ import annotations

from typing import TypedDict

# Run artifacts
FEATURE_SCHEMA = "feature_schema.json"
SMOKE_EXAMPLES = "smoke/examples.json"
DATA_PROFILE = "data/profile.json"  # the training data's profile, compared by the next gate
GATE_REPORT = "gate/gate.json"
MODEL_CARD = "model_card.md"


class SchemaFeature(TypedDict):
    """One feature in FEATURE_SCHEMA: its column name and kind ("numeric" or "categorical")."""

    name: str
    kind: str


class FeatureSchema(TypedDict):
    """What FEATURE_SCHEMA holds: the features in training order, the target column and the positive label."""

    features: list[SchemaFeature]
    target: str
    positive_label: str


class SmokeExamples(TypedDict, total=False):
    """What SMOKE_EXAMPLES holds: input records, and the labels and positive-class probabilities given at training."""

    records: list[dict[str, object]]
    predictions: list[str]
    probabilities: list[float]


# Model version tags
METRIC_TAG_PREFIX = "metric."
GATE = "gate"  # passed | failed | pending (also a run tag)
GATE_SIGNATURE = "gate.signature"
GATE_BASELINE = "gate.baseline_version"
SMOKE = "smoke"  # passed | failed | pending
SMOKE_SIGNATURE = "smoke.signature"
SMOKE_AT = "smoke.at"
SMOKE_TARGET = "smoke.target"
SMOKE_DETAIL = "smoke.detail"
SMOKE_ARTIFACT_DIGEST = "smoke.artifact_digest"  # what the smoke-tested API loaded
SMOKE_IMAGE_DIGEST = "smoke.image_digest"
IMAGE_REF = "image.ref"  # REPOSITORY:GIT_SHA the smoke-tested image was published as
IMAGE_DIGEST = "image.digest"  # its manifest digest in that registry: what deployments pull
IMAGE_SIGNATURE = "image.signature"
ARTIFACT_DIGEST = "artifact.digest"  # recorded at registration; gate and smoke are bound to it
GIT_SHA = "git_sha"
DATA_FINGERPRINT = "data.fingerprint"  # sha256 of the training data set
DATA_ROWS = "data.rows"
DATA_PATH = "data.path"  # run only
MODEL_TYPE = "model.type"  # run only (a tag, and the param of the same name)
MODEL_ID = "model_id"  # run only: the logged model's id
POSITIVE_LABEL = "positive_label"  # run only
SCHEMA_BREAK_ALLOWED = "gate.schema_break_allowed"  # what a gated break removed or changed, when allowed

# Registered-model tags
HISTORY_PREFIX = "alias_history."

# Registered-model tags of a rollout in progress (written under the release lock, signed like the verdicts):
# the canary alias points at the version; these say how replicas route to it (api/release/traffic.py).
CANARY_MODE = "canary.mode"  # off | shadow | canary
CANARY_VERSION = "canary.version"  # the version the state is about (the canary alias must point at it)
CANARY_WEIGHT = "canary.weight"  # percent of requests the canary answers (canary mode)
CANARY_SHADOW_SHARE = "canary.shadow_share"  # share of production's requests copied to it (shadow mode)
CANARY_SALT = "canary.salt"  # hex, secret per rollout: keys the customer split, so no client can aim at a side
# What binds the state to one rollout (replicas refuse it past its expiry, once its rollout ended, or when the
# ledger entry that started the rollout is not the one named):
CANARY_ROLLOUT = "canary.rollout"  # the rollout's id: random, drawn when the rollout starts
CANARY_STARTED = "canary.started"  # when the rollout started (ISO 8601, UTC)
CANARY_EXPIRES = "canary.expires"  # after this instant (ISO 8601, UTC) the state is read as off
CANARY_LEDGER_ENTRY = "canary.ledger_entry"  # the tag key of the ledger entry that started the rollout
CANARY_LEDGER_HASH = "canary.ledger_hash"  # the sha256 of that entry's stored text
CANARY_SIGNATURE = "canary.signature"

# Model version tags of the rollout verdict
ROLLOUT = "rollout"  # passed | aborted
ROLLOUT_SIGNATURE = "rollout.signature"
ROLLOUT_DETAIL = "rollout.detail"

# Model version tags of the live quality verdict (`python -m pipeline quality`, from delayed outcomes)
QUALITY = "quality"  # passed | failed | inconclusive
QUALITY_SIGNATURE = "quality.signature"  # covers the verdict and QUALITY_FIGURES
QUALITY_FIGURES = "quality.figures"  # JSON: when, labelled rows, each metric live with its interval and the gate's
QUALITY_LOOKS = "quality.looks"  # how many times quality judged the version (its look budget's count)
