"""A loaded model version: the object requests use, swapped whole on reload."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pandas as pd

from api.model.columnar import ColumnTypes, RecordDecoder
from api.model.compiled import CompiledPipeline, NotCompilable
from api.model.drift import FeatureBins
from api.model.schema import FeatureSpec, Problem, RecordValidator, RequestError, parse_json, quote
from api.release.frames import Columns, typed_frame
from api.release.redact import plain_message

PARITY_TOLERANCE = 1e-12
# Tree models compute in float32: a larger finite number cannot be scored by them.
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Prediction:
    """One label and one positive-class probability per record, in order."""

    labels: list[object]  # the model's classes, as numpy's tolist() gives them
    probabilities: list[float]


@dataclass
class LoadedModel:
    """One version, ready to answer; immutable once built."""

    pipeline: Any  # the fitted sklearn Pipeline
    features: list[FeatureSpec]
    positive_label: str
    max_batch_size: int
    info: dict[str, object] = field(default_factory=dict)  # name, version, alias, run_id, metrics, git_sha
    mlflow_model: Any = None  # the pyfunc metadata, for /invocations
    parity_frames: list[pd.DataFrame] = field(default_factory=list)
    drift_bins: list[FeatureBins] = field(default_factory=list)  # live drift: the training profile's bins
    entity_field: str | None = None  # a record field naming the customer, accepted and never predicted on

    def __post_init__(self) -> None:
        self.validator = RecordValidator(self.features, self.max_batch_size, self.entity_field)
        self.decoder = RecordDecoder(self.features, self.entity_field)
        self.invocation_types = ColumnTypes(self.features)
        self.positive_index = list(self.pipeline.classes_).index(self.positive_label)
        self.compiled, self.compile_note = self._compile()
        self.info = {**self.info, "loaded_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.info["fast_path"] = self.compiled is not None
        self.info["fast_path_note"] = self.compile_note

    @property
    def version(self) -> str:
        """This model's version in the registry ("" when not known)."""
        return str(self.info.get("version", ""))

    def request_columns(self, raw: bytes) -> Columns:
        """Column-wise values of a /predict body, or RequestError naming what is wrong with it."""
        columns = self.decoder.columns(raw, self.max_batch_size)
        if columns is not None:
            return columns
        return self.validator.columns(self.validator.validate(parse_json(raw)))  # words the problem

    def labels(self, columns: Columns) -> np.ndarray:
        """Labels only (the /invocations answer)."""
        if self.compiled is not None:
            return self.compiled.predict(columns)[0]
        return cast(np.ndarray, self.pipeline.predict(self.frame(columns)))  # sklearn's labels, untyped

    def predict_columns(self, columns: Columns) -> Prediction:
        """Predict from column-wise values (None or NaN for missing)."""
        if self.compiled is not None:
            labels, proba = self.compiled.predict(columns)
        else:
            frame = self.frame(columns)
            labels, proba = self.pipeline.predict(frame), self.pipeline.predict_proba(frame)
        return Prediction(labels.tolist(), proba[:, self.positive_index].tolist())

    def unscorable(self, columns: Columns, exc: Exception) -> RequestError:
        """The client's values the model could not score (sklearn raised on them), named field by field."""
        problems: list[Problem] = []
        for spec in self.features:
            if not spec.numeric:
                continue
            for record, value in enumerate(columns[spec.name]):
                if value is not None and abs(value) > FLOAT32_MAX:
                    message = (
                        f"record {record}: field {spec.name!r}: {quote(float(value))} is too large for this model "
                        f"(|x| must be at most {FLOAT32_MAX:.4g})"
                    )
                    problems.append({"loc": ["records", record, spec.name], "record": record, "field": spec.name,
                                     "message": message})  # fmt: skip
                    if len(problems) == 50:
                        return RequestError(problems)
        if not problems:
            text = plain_message(exc, 200) or "no reason given"
            problems.append({"loc": ["records"], "record": None, "field": None,
                             "message": f"the model cannot score these values: {text}"})  # fmt: skip
        return RequestError(problems)

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Labels for a frame already enforced to the model's schema (the /invocations path)."""
        if self.compiled is None:
            return cast(np.ndarray, self.pipeline.predict(frame))  # sklearn's labels, untyped
        columns = {f.name: frame[f.name].tolist() for f in self.features}
        return self.compiled.predict(columns)[0]

    def frame(self, columns: Columns) -> pd.DataFrame:
        """Columns as the frame sklearn was trained on (float for numbers, object with NaN for text)."""
        return typed_frame(columns, self.features)

    def _compile(self) -> tuple[CompiledPipeline | None, str]:
        """Compile, then prove it: any disagreement with sklearn means sklearn serves."""
        try:
            compiled = CompiledPipeline(self.pipeline)
        except NotCompilable as exc:
            return None, f"sklearn path: {exc}"
        for frame in self.parity_frames:
            columns = {f.name: frame[f.name].tolist() for f in self.features}
            labels, proba = compiled.predict(columns)
            if not np.array_equal(labels, self.pipeline.predict(frame)):
                return None, "sklearn path: compiled labels differ from sklearn"
            if not np.allclose(proba, self.pipeline.predict_proba(frame), rtol=0, atol=PARITY_TOLERANCE):
                return None, "sklearn path: compiled probabilities differ from sklearn"
        rows = sum(len(f) for f in self.parity_frames)
        if rows == 0:
            return None, "sklearn path: no examples to check the compiled path against"
        return compiled, f"compiled numpy path, identical to sklearn on {rows} stored rows"
