"""Where the service's models come from: the MLflow registry, through the one release check.

The alias (or a pinned version) is resolved here, and each version goes
through api/release/check.py before it becomes a LoadedModel.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import cast

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from api.model.drift import drift_bins
from api.model.loaded_model import LoadedModel
from api.model.schema import FeatureSpec
from api.release.check import check_release, stored_json
from api.release.contract import DATA_PROFILE, FEATURE_SCHEMA, GIT_SHA, METRIC_TAG_PREFIX
from api.release.frames import typed_frame
from api.release.traffic import Target
from api.release.traffic_reading import TrafficReader
from api.release.verdicts import QualityVerdict, quality_verdict, signature_state
from api.settings import Settings


class RegistrySource:
    """Resolves the alias (or pinned version) and loads versions from MLflow."""

    def __init__(
        self, settings: Settings, client: MlflowClient | None = None, verify_key: Ed25519PublicKey | None = None
    ) -> None:
        self.settings = settings
        self.client = client or MlflowClient()
        self.verify_key = verify_key
        self.accepted: set[str] = set()  # digests a probe child accepted: a swap back needs no new probe
        # The canary state's check, with what it refused (shown on /model): bound to a running rollout, and
        # only shadow without a verify key.
        self.traffic_reader = TrafficReader(settings.model_name, settings.canary_alias, verify_key)

    def target_version(self) -> str:
        """The version that should be serving now; a cheap registry call."""
        return self.target().production

    def target(self) -> Target:
        """Production's version, the canary's when a rollout runs, and how to route between them: one registry call."""
        s = self.settings
        if s.model_version:
            return Target(s.model_version)
        model = self.client.get_registered_model(s.model_name)
        aliases = {alias: str(version) for alias, version in model.aliases.items()}
        if s.model_alias not in aliases:
            raise LookupError(f"model {s.model_name!r} has no alias @{s.model_alias}")
        canary = aliases.get(s.canary_alias)
        traffic = self.traffic_reader.read(model.tags, canary)
        return Target(aliases[s.model_alias], canary if traffic.mode != "off" else None, traffic)

    def quality(self, version: str) -> QualityVerdict | None:
        """The version's live quality verdict (`pipeline quality`), only if it verifies with a verify key."""
        mv = self.client.get_model_version(self.settings.model_name, version)
        return quality_verdict(
            mv.tags, self.verify_key, model=self.settings.model_name, version=version, run_id=str(mv.run_id or "")
        )

    def load(self, version: str) -> LoadedModel:
        """`version` through the release check, built into the LoadedModel requests use; RefusedVersion says why not."""
        s = self.settings
        mv = self.client.get_model_version(s.model_name, version)
        with tempfile.TemporaryDirectory(prefix="model-") as tmp:
            verified = check_release(
                self.client,
                s.model_name,
                mv,
                Path(tmp),
                self.verify_key,
                require_smoke=s.requires_smoke,
                limits=s.probe_limits,
                accepted=self.accepted,
                cache=s.probe_cache,
            )
            files, pipeline = verified.files, verified.pipeline
            metadata = Model.load(files.model_dir)
            schema = metadata.get_input_schema()
            features = [FeatureSpec(c.name, c.type.name, c.required) for c in schema.inputs]
            trained = json.loads(files.artifact.files[FEATURE_SCHEMA])
            stored = verified.examples
            smoke = typed_frame(pd.DataFrame(stored["records"]), features) if stored else None
            examples = (_input_example(metadata, files.model_dir, features), smoke)
            profile = stored_json(self.client, cast(str, mv.run_id), DATA_PROFILE)
        return LoadedModel(
            pipeline=pipeline,
            features=features,
            positive_label=trained["positive_label"],
            max_batch_size=s.max_batch_size,
            info={
                "name": s.model_name,
                "version": str(mv.version),
                "alias": None if s.model_version else s.model_alias,
                "run_id": mv.run_id,
                "metrics": {
                    k.removeprefix(METRIC_TAG_PREFIX): float(v)
                    for k, v in mv.tags.items()
                    if k.startswith(METRIC_TAG_PREFIX)
                },
                "git_sha": mv.tags.get(GIT_SHA),
                "artifact_digest": files.digest,
                "signature": signature_state(
                    mv.tags,
                    self.verify_key,
                    model=s.model_name,
                    version=str(mv.version),
                    run_id=cast(str, mv.run_id),  # MLflow types it `str | None`: the release check fetched its run
                ),
            },
            mlflow_model=metadata,
            parity_frames=[frame for frame in examples if frame is not None],
            drift_bins=drift_bins(profile, [f.name for f in features]),
            entity_field=s.entity_id_field,
        )


def _input_example(metadata: Model, local: Path, features: list[FeatureSpec]) -> pd.DataFrame | None:
    example = metadata.load_input_example(str(local))
    return None if example is None else typed_frame(pd.DataFrame(example), features)
