"""Scoring on the executors: the version shipped as plain data, rebuilt once per worker, each partition scored.

The driver ships the verified artifact's bytes (shipment); an executor checks
their digest, loads the estimator through the allow-list
(api.release.safe_model.load_estimator_bytes) and rebuilds the LoadedModel,
compiled path and its proof included (rebuild). No executor reads the
registry, and no model is loaded from a URI. Each partition is scored by the
local engine's BatchScorer in `mapInArrow` (score_partition).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from api.model.loaded_model import LoadedModel
from api.model.schema import FeatureSpec
from api.release.safe_model import ArtifactBytes, RefusedModel, load_estimator_bytes
from pipeline.core.errors import CheckFailed
from pipeline.scoring.batch_scorer import BatchScorer
from pipeline.scoring.byte_caps import ByteCaps, check_batch
from pipeline.scoring.spark_row_numbers import runs

SOURCE_FILE = "source_file"  # in the rejects of a folder of files: which file the row is in
_SCORERS: dict[str, BatchScorer] = {}  # per Python worker: the rebuilt version, by digest


def shipment(model: LoadedModel, client: Any) -> dict[str, Any]:
    """What executors need to rebuild `model`, as plain data: the verified bytes, features, label, examples.

    The artifact is fetched again and shipped only if its digest is the one the
    release check verified when `model` was loaded.
    """
    from api.release.check import fetch_version_files  # MLflow: the driver's only, executors never import it

    info = model.info
    with tempfile.TemporaryDirectory(prefix="ship-") as tmp:
        files = fetch_version_files(client, str(info["name"]), model.version, str(info["run_id"]), Path(tmp))
    if files.digest != info.get("artifact_digest"):
        raise CheckFailed(
            f"version {model.version} refused: its artifact changed since it was verified "
            f"({files.digest[:19]}… is not {str(info.get('artifact_digest'))[:19]}…); nothing scored"
        )
    return {
        "files": dict(files.artifact.files),
        "model_file": files.artifact.model_name,
        "digest": files.digest,
        "features": [[f.name, f.type, f.required] for f in model.features],
        "positive_label": model.positive_label,
        "max_batch_size": model.max_batch_size,
        "info": {k: info[k] for k in ("name", "version", "alias", "run_id", "artifact_digest") if k in info},
        "examples": [frame.to_dict(orient="split") for frame in model.parity_frames],
        "note": BatchScorer(model).columnar.note,
    }


def rebuild(payload: dict[str, Any]) -> BatchScorer:
    """An executor's BatchScorer from a shipment: digest checked, estimator loaded through the allow-list."""
    scorer = _SCORERS.get(payload["digest"])
    if scorer is not None:
        return scorer
    artifact = ArtifactBytes(dict(payload["files"]), payload["model_file"])
    if artifact.digest != payload["digest"]:
        raise RefusedModel("the shipped artifact is not the one the driver verified")
    features = [FeatureSpec(name, kind, required) for name, kind, required in payload["features"]]
    numbers = {f.name: "float64" for f in features if f.numeric}  # the others: object, NaN for missing
    frames = [pd.DataFrame(**split).astype(numbers) for split in payload["examples"]]
    model = LoadedModel(
        pipeline=load_estimator_bytes(artifact.model_bytes),
        features=features,
        positive_label=payload["positive_label"],
        max_batch_size=payload["max_batch_size"],
        info=dict(payload["info"]),
        parity_frames=frames,
    )
    scorer = BatchScorer(model)
    if scorer.columnar.note != payload["note"]:  # an executor whose libraries differ from the driver's
        raise RefusedModel(f"an executor scores by {scorer.columnar.note!r}, the driver by {payload['note']!r}")
    _SCORERS[payload["digest"]] = scorer
    return scorer


def score_partition(
    payload: Any,
    offsets: dict[tuple[str, int], int],
    names: list[str],
    schema_json: str,
    large: bool,
    caps: ByteCaps,
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: each batch validated and scored; good and bad rows in one schema (reject_reason null: scored).

    Each batch is held to the local engine's byte caps (byte_caps.py) before it is scored; the JVM has read and
    decoded it by then, so this names the cell, while Spark's own memory settings bound the JVM.
    """
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    scorer = rebuild(payload.value)
    target = to_arrow_schema(StructType.fromJson(_json(schema_json)), prefers_large_types=large)
    seen: dict[tuple[str, int], int] = {}
    for batch in batches:
        for start, stop, file, first_row in runs(batch, offsets, seen):
            part = batch.slice(start, stop - start).select(names)
            check_batch(part, first_row, caps, file)
            result = scorer.score(part, first_row)
            if result.scored is not None:
                yield _conform(result.scored, target, None)
            if result.rejects is not None:
                yield _conform(result.rejects, target, file)


def _conform(batch: pa.RecordBatch, target: pa.Schema, file: str | None) -> pa.RecordBatch:
    """`batch` in the union schema: the columns it lacks are null (the source file only in rejects)."""
    rows = batch.num_rows
    arrays = []
    for field in target:
        if field.name == SOURCE_FILE and file is not None:
            arrays.append(pa.array([file] * rows, type=field.type))
        elif field.name in batch.schema.names:
            arrays.append(batch.column(field.name).cast(field.type))
        else:
            arrays.append(pa.nulls(rows, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def _json(text: str) -> Any:
    import json

    return json.loads(text)
