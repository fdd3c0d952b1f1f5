"""The API's compiled path fed whole columns: text as codes, numbers as float arrays, no per-value Python.

LoadedModel.compiled (api/model/compiled.py) reads the fitted numbers once and
predicts with numpy; its transform still looks each text value up in a dict,
one Python call per cell. Batch columns arrive as codes into a few distinct
values (column_values.Coded), so each distinct value is
looked up once and the codes index the answer. The matrix, and what follows
it, are the compiled path's own operations on the same numbers, but for one:
a logistic regression's scores are summed row by row in a fixed order
(einsum) where the compiled path's BLAS product may round the last digit
differently depending on how many rows it multiplies at once. So a row gets
the same probability whatever batch, file format or engine it comes in.

Like the compiled path itself, this is proven before it serves: at load time
it must give the compiled path's labels and probabilities (within the API's
parity tolerance) on the version's stored examples and on variants of them
with missing and unseen values. Otherwise the LoadedModel's own
predict_columns scores, per value, and the note says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from api.model.compiled import CompiledPipeline
from api.model.loaded_model import PARITY_TOLERANCE, LoadedModel
from pipeline.scoring.column_values import Coded, Values

UNSEEN = "\x00unseen category\x00"
MATRIX_ROWS = 4096


class ColumnarModel:
    """predict(columns) -> (class index per row, probability of the positive label), for validated columns."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.classes = list(model.pipeline.classes_)
        self.positive_index = model.positive_index
        self.compiled: CompiledPipeline | None = None
        self.note = self._prove(model.compiled)

    def predict(self, columns: dict[str, Values], rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Class indices and positive-label probabilities of `rows` validated rows (ValueError if unscorable)."""
        if rows == 0:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        if self.compiled is None:
            return self._per_value(columns)
        return self._predict(self.compiled, columns, rows)

    # -- the compiled path on columns -----------------------------------------------------------

    def _predict(
        self, compiled: CompiledPipeline, columns: dict[str, Values], rows: int
    ) -> tuple[np.ndarray, np.ndarray]:
        labels = np.empty(rows, dtype=np.intp)
        positive = np.empty(rows)
        tables = self._tables(compiled, columns)
        for start in range(0, rows, MATRIX_ROWS):  # a matrix that stays in cache: a few thousand rows at a time
            stop = min(start + MATRIX_ROWS, rows)
            X = self._matrix(compiled, columns, tables, start, stop)
            if compiled.linear:  # CompiledPipeline.predict, from the matrix on; each row's sum in a fixed order
                scores = np.einsum("ij,j->i", X, compiled.coef_T[:, 0]) + compiled.intercept[0]
                p = expit(scores)
                labels[start:stop] = scores > 0
                positive[start:stop] = p if self.positive_index == 1 else 1 - p
            else:
                proba = compiled.estimator.predict_proba(X)
                labels[start:stop] = np.argmax(proba, axis=1)
                positive[start:stop] = proba[:, self.positive_index]
        return labels, positive

    @staticmethod
    def _tables(compiled: CompiledPipeline, columns: dict[str, Values]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per categorical column: its codes, and the output position of each distinct value (last: missing)."""
        tables = []
        for name, fill, lookup in compiled.categorical:
            coded = columns[name]
            assert isinstance(coded, Coded)
            absent = lookup.get(None, -1)  # None, then the imputed category (as CompiledPipeline's TextColumn.missing)
            if absent < 0:
                absent = lookup.get(fill, -1)
            table = np.array([lookup.get(v, -1) for v in coded.values] + [absent], dtype=np.intp)
            tables.append((coded.codes, table))
        return tables

    @staticmethod
    def _matrix(
        compiled: CompiledPipeline,
        columns: dict[str, Values],
        tables: list[tuple[np.ndarray, np.ndarray]],
        start: int,
        stop: int,
    ) -> np.ndarray:
        """CompiledPipeline.transform's matrix of rows start..stop, text looked up once per distinct value."""
        rows = stop - start
        out = np.zeros((rows, compiled.width))
        for offset, block in compiled.numeric:
            values = np.array([_floats(columns[c])[start:stop] for c in block.columns], dtype=np.float64).T
            out[:, offset : offset + len(block.columns)] = block.apply(values)
        for offset, code_block in compiled.codes:  # a code per distinct value; the last entry (code -1) is missing: NaN
            for j, (name, lookup) in enumerate(zip(code_block.columns, code_block.lookups, strict=True)):
                coded = columns[name]
                assert isinstance(coded, Coded)
                codes = np.array([lookup.get(v, np.nan) for v in coded.values] + [np.nan], dtype=np.float64)
                out[:, offset + j] = codes[coded.codes[start:stop]]
        if tables:
            row_starts = np.arange(0, rows * compiled.width, compiled.width, dtype=np.intp)
            flat = out.reshape(-1)
            for codes, table in tables:
                position = table[codes[start:stop]]
                hit = position >= 0  # unknown categories encode as all zeros
                flat[position + row_starts if hit.all() else (position + row_starts)[hit]] = 1.0
        return out

    def _per_value(self, columns: dict[str, Values]) -> tuple[np.ndarray, np.ndarray]:
        """LoadedModel.predict_columns on the columns as the API holds them (lists, None for missing)."""
        prediction = self.model.predict_columns(api_columns(columns))
        index = {label: i for i, label in enumerate(self.classes)}
        return np.array([index[label] for label in prediction.labels], dtype=np.intp), np.array(
            prediction.probabilities
        )

    # -- proof ----------------------------------------------------------------------------------

    def _prove(self, compiled: CompiledPipeline | None) -> str:
        """Serve columns only if they give the compiled path's answers; the note says which path scores."""
        if compiled is None:
            return f"per value ({self.model.compile_note})"
        if compiled.features:
            return "compiled path per value: the team's feature steps run on the records' frame"
        features = self.model.features
        numeric = {c for _, block in compiled.numeric for c in block.columns}
        text = {name for name, _, _ in compiled.categorical} | {c for _, block in compiled.codes for c in block.columns}
        kinds = {f.name: f for f in features}
        if any(not kinds[c].numeric for c in numeric if c in kinds) or any(
            kinds[c].numeric or kinds[c].type == "boolean" for c in text if c in kinds
        ):
            return "compiled path per value: a block's columns are not of the kind it transforms"
        frames = [f for f in self.model.parity_frames if len(f)]
        if not frames:
            return "compiled path per value: no examples to prove the columnar path on"
        rows = 0
        for frame in [*frames, *(_variants(frames[0], features))]:
            api = {f.name: _api_values(frame[f.name], f.numeric) for f in features}
            want_labels, want_proba = compiled.predict(api)
            columns = {f.name: _columnar(frame[f.name], f.numeric) for f in features}
            labels, positive = self._predict(compiled, columns, len(frame))
            if not np.array_equal(np.asarray(self.classes, dtype=object)[labels], want_labels):
                return "compiled path per value: columnar labels differ from the compiled path's"
            if not np.allclose(positive, want_proba[:, self.positive_index], rtol=0, atol=PARITY_TOLERANCE):
                return "compiled path per value: columnar probabilities differ from the compiled path's"
            rows += len(frame)
        self.compiled = compiled
        return f"compiled path on columns, identical to it on {rows} rows (stored examples and variants)"


def _floats(values: Values) -> np.ndarray:
    assert isinstance(values, np.ndarray)
    return values


def api_columns(columns: dict[str, Values]) -> dict[str, Any]:
    """Columns as the API's request path holds them: float arrays for numbers, lists with None otherwise."""
    return {name: values.tolist() if isinstance(values, Coded) else values for name, values in columns.items()}


def _api_values(column: pd.Series, numeric: bool) -> Any:
    if numeric:
        return column.to_numpy(dtype=np.float64)
    return [None if isinstance(v, float) and v != v else v for v in column.tolist()]


def _columnar(column: pd.Series, numeric: bool) -> Values:
    if numeric:
        return np.asarray(column.to_numpy(dtype=np.float64))
    values: list[str] = []
    seen: dict[Any, int] = {}
    codes = []
    for v in column.tolist():
        if v is None or (isinstance(v, float) and v != v):
            codes.append(-1)
            continue
        if v not in seen:
            seen[v] = len(values)
            values.append(v)
        codes.append(seen[v])
    return Coded(np.array(codes, dtype=np.int64), values)


def _variants(frame: pd.DataFrame, features: Sequence[Any]) -> list[pd.DataFrame]:
    """The frame with every text value unseen, every value missing, and both mixed row by row."""
    unseen, missing, mixed = frame.copy(), frame.copy(), frame.copy()
    for i, spec in enumerate(features):
        column = frame[spec.name]
        gap: Any = np.nan
        unseen[spec.name] = column if spec.numeric else UNSEEN
        missing[spec.name] = gap
        every_other = (np.arange(len(frame)) + i) % 3 == 0
        mixed[spec.name] = column.where(~every_other, gap if spec.numeric or i % 2 else UNSEEN)
    return [unseen, missing.astype({f.name: "float64" for f in features if f.numeric}), mixed]
