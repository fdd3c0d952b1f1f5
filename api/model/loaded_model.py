"""A loaded model version: the object requests use, swapped whole on reload."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pandas as pd

from api.model.columns import Columns
from api.model.compiled import CompiledPipeline, NotCompilable
from api.model.drift import FeatureBins
from api.model.fast_decoders import ColumnTypes, RecordDecoder
from api.model.online_store import ABSENT, METADATA_KEY, Plan, ServiceSpec
from api.model.schema import FeatureSpec, Problem, RecordValidator, RequestError, parse_json, quote
from api.release.frames import typed_frame
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
    # The feature service this version was trained from (feature_service.json; None: read from MLmodel's metadata,
    # where training writes the same record). Its records may then carry only the customer's id.
    feature_service: ServiceSpec | None = None

    def __post_init__(self) -> None:
        if self.feature_service is None:
            record = (getattr(self.mlflow_model, "metadata", None) or {}).get(METADATA_KEY)
            self.feature_service = None if record is None else ServiceSpec.parse(record)
        self.positive_index = list(self.pipeline.classes_).index(self.positive_label)
        self.compiled, self.compile_note = self._compile()  # first: the decoders take its categories
        self.plan: Plan | None = None
        if self.feature_service is not None:
            # The service's join key names the customer: the id a lookup reads, and the canary split's key.
            self.entity_field = self.feature_service.entity_field
            self._service_decoders(self.feature_service)
        self.validator = RecordValidator(self.features, self.max_batch_size, self.entity_field)
        self.invocation_types = ColumnTypes(self.features, self.entity_field)
        self.decoder = RecordDecoder(self.features, self.entity_field, self.categories())
        self.info = {**self.info, "loaded_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.info["fast_path"] = self.compiled is not None
        self.info["fast_path_note"] = self.compile_note

    def categories(self) -> dict[str, list[str]]:
        """Each text feature's categories as the compiled path encodes them (none: not compiled, or feature steps)."""
        compiled = self.compiled
        if compiled is None or compiled.features:  # the feature steps may read and remake the records' text
            return {}
        known: dict[str, list[str]] = {}
        for text in compiled.text:
            known.setdefault(text.name, []).extend(value for value in text.slices if type(value) is str)
        return known

    @property
    def version(self) -> str:
        """This model's version in the registry ("" when not known)."""
        return str(self.info.get("version", ""))

    def request_columns(self, raw: bytes) -> Columns:
        """Column-wise values of a /predict body, or RequestError naming what is wrong with it.

        A version with a feature service: a feature a record omits is ABSENT (fetched by its id: api/request_path.py).
        """
        if self.plan is not None:
            return self.service_columns(raw)
        columns = self.decoder.columns(raw, self.max_batch_size)
        if columns is not None:
            return columns
        return self.validator.columns(self.validator.validate(parse_json(raw)))  # words the problem

    def _service_decoders(self, spec: ServiceSpec) -> None:
        """The readers of records by id: only the id and request-time fields (fast), or any mix (words problems)."""
        self.plan = plan = Plan.of(spec, self.features)
        self.by_id_decoder = RecordDecoder(list(plan.request_time), spec.entity_field, self.categories())
        self.by_id_types = ColumnTypes(list(plan.request_time), spec.entity_field)  # /invocations
        fetched = {f.name for f in plan.fetched}
        self.lenient = RecordValidator(
            [replace(f, required=False) if f.name in fetched else f for f in self.features],
            self.max_batch_size,
            spec.entity_field,
        )
        # A record by id fails the full decoder only if the service gives some required input.
        self.full_first = any(f.required for f in plan.fetched)

    def service_columns(self, raw: bytes) -> Columns:
        """Full records as today; records by id with their service features ABSENT; a mix, record by record."""
        plan = self.plan
        assert plan is not None
        if self.full_first:
            full = self.decoder.columns(raw, self.max_batch_size)
            if full is not None:
                return full
        by_id = self.by_id_decoder.columns(raw, self.max_batch_size)
        if by_id is not None:
            count = len(next(iter(by_id.values()))) if by_id else 0
            return {**by_id, **{f.name: [ABSENT] * count for f in plan.fetched}}
        records = self.lenient.validate(parse_json(raw))  # words a problem of either kind
        problems: list[Problem] = []
        for index, record in enumerate(records):
            if not any(f.name in record for f in plan.fetched):
                continue  # by id
            for spec in plan.fetched:
                if spec.required and record.get(spec.name) is None:
                    what = "is missing" if spec.name not in record else "may not be null"
                    message = (
                        f"record {index}: field {spec.name!r}: {what} (a record gives every feature, "
                        f"or only {plan.spec.entity_field!r} to read them from the feature store)"
                    )
                    problems.append({"loc": ["records", index, spec.name], "record": index, "field": spec.name,
                                     "message": message})  # fmt: skip
        if problems:
            raise RequestError(problems[:50])
        columns = self.lenient.columns(records)
        by_ids = [i for i, record in enumerate(records) if not any(f.name in record for f in plan.fetched)]
        for spec in plan.fetched:
            column = columns[spec.name]
            for index in by_ids:
                column[index] = ABSENT
        return columns

    def labels(self, columns: Columns) -> np.ndarray:
        """Labels only (the /invocations answer)."""
        if self.compiled is not None:
            return self.compiled.predict(columns)[0]
        return cast(np.ndarray, self.pipeline.predict(self.frame(columns)))  # sklearn's labels, untyped

    def predict_columns(self, columns: Columns) -> Prediction:
        """Predict from column-wise values (None or NaN for missing)."""
        if self.compiled is not None:
            return Prediction(*self.compiled.answer(columns, self.positive_index))
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

    def predict_frame(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[float]]:
        """Labels and positive-class probabilities for a frame already enforced to the model's schema (/invocations)."""
        if self.compiled is None:
            proba = self.pipeline.predict_proba(frame)
            return self.pipeline.predict(frame), proba[:, self.positive_index].tolist()
        labels, proba = self.compiled.predict({f.name: frame[f.name].tolist() for f in self.features})
        return labels, proba[:, self.positive_index].tolist()

    def frame(self, columns: Columns) -> pd.DataFrame:
        """Columns as the frame sklearn was trained on (float for numbers, object with NaN for text)."""
        return typed_frame(columns, self.features)

    def _compile(self) -> tuple[CompiledPipeline | None, str]:
        """Compile, then prove it: any disagreement with sklearn means sklearn serves."""
        try:
            compiled = CompiledPipeline(self.pipeline, self.frame)
        except NotCompilable as exc:
            return None, f"sklearn path: {exc}"
        # Each example frame whole, and each of its rows alone: one record takes a path of its own.
        frames = [*self.parity_frames, *(f.iloc[[i]] for f in self.parity_frames for i in range(len(f)))]
        for frame in frames:
            columns = {f.name: frame[f.name].tolist() for f in self.features}
            labels, proba = compiled.predict(columns)
            if not np.array_equal(labels, self.pipeline.predict(frame)):
                return None, "sklearn path: compiled labels differ from sklearn"
            if not np.allclose(proba, self.pipeline.predict_proba(frame), rtol=0, atol=PARITY_TOLERANCE):
                return None, "sklearn path: compiled probabilities differ from sklearn"
            answer = compiled.answer(columns, self.positive_index)
            if answer != (labels.tolist(), proba[:, self.positive_index].tolist()):
                return None, "sklearn path: compiled answers differ from compiled predictions"
        rows = sum(len(f) for f in self.parity_frames)
        if rows == 0:
            return None, "sklearn path: no examples to check the compiled path against"
        return compiled, f"compiled numpy path, identical to sklearn on {rows} stored rows"
