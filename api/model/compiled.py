"""The fitted sklearn pipeline compiled into plain numpy for the request path.

scikit-learn's ColumnTransformer costs milliseconds per call, almost all of it
input validation and frame handling. The fitted statistics are few numbers:
imputation values, means and scales, one-hot vocabularies, coefficients. This
module reads them once at load time and applies them with numpy, in the same
order of operations, so the outputs match the sklearn pipeline. A pipeline
whose shape is not recognised raises NotCompilable and is served by sklearn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

from api.model.columns import Columns


class NotCompilable(Exception):
    """The pipeline has a shape this module does not translate."""


@dataclass(frozen=True)
class NumericBlock:
    """Numeric columns: imputed, then centred and scaled as the block's StandardScaler does, if it has one."""

    columns: list[str]
    fill: np.ndarray  # imputation value per column
    mean: np.ndarray | None
    scale: np.ndarray | None

    def apply(self, values: np.ndarray) -> np.ndarray:
        """The block's output for a (rows, columns) float matrix, NaN where a value is missing."""
        missing = np.isnan(values)
        if missing.any():
            values = np.where(missing, self.fill, values)
        if self.mean is not None:
            values -= self.mean
        if self.scale is not None:
            values /= self.scale
        return values


@dataclass(frozen=True)
class CodeBlock:
    """Categorical columns as their codes (an OrdinalEncoder): one output column each, NaN when unknown or missing."""

    columns: list[str]
    lookups: list[dict[object, float]]  # category -> code, per input column

    def apply(self, columns: Columns, rows: int) -> np.ndarray:
        """The (rows, columns) codes; anything not in a lookup (unseen, None, NaN) is NaN, as the booster's missing."""
        out = np.empty((rows, len(self.columns)))
        for j, (name, lookup) in enumerate(zip(self.columns, self.lookups, strict=True)):
            out[:, j] = np.fromiter(map(lookup.get, columns[name], repeat(np.nan)), np.float64, rows)
        return out


@dataclass(frozen=True)
class CategoricalBlock:
    """Categorical columns: imputed, then one-hot encoded into `width` output columns."""

    columns: list[str]
    fill: list[object]  # imputation value per column
    lookups: list[dict[object, int]]  # category -> output column, per input column
    width: int


class CompiledPipeline:
    """predict(columns) -> (labels, class probabilities) without sklearn on the hot path."""

    def __init__(self, pipeline: Pipeline, to_frame: Callable[[Columns], pd.DataFrame] | None = None) -> None:
        if not isinstance(pipeline, Pipeline) or len(pipeline.steps) < 2:
            raise NotCompilable("expected Pipeline(feature steps..., preprocess, classifier)")
        *features, (_, preprocess), (_, self.estimator) = pipeline.steps
        # The team's feature steps are pandas code: they run on the records' frame (`to_frame`, the cast the
        # pipeline was trained on), and the compiled preprocessing reads the columns they return.
        self.features = [step for _, step in features]
        if self.features and to_frame is None:
            raise NotCompilable("feature steps need the records as the frame they were trained on")
        self.to_frame = to_frame
        if not isinstance(preprocess, ColumnTransformer):
            raise NotCompilable("first step is not a ColumnTransformer")
        if getattr(preprocess, "sparse_output_", False):
            raise NotCompilable("ColumnTransformer produces sparse output")
        self.blocks: list[NumericBlock | CategoricalBlock | CodeBlock] = []
        for name, transformer, columns in preprocess.transformers_:
            if name == "remainder":
                if transformer != "drop" and len(columns):
                    raise NotCompilable("remainder columns are passed through")
                continue
            self.blocks.append(_compile_block(transformer, list(columns)))
        self.width = sum(b.width if isinstance(b, CategoricalBlock) else len(b.columns) for b in self.blocks)
        # Output positions: (offset, block) per numeric block; (column, fill, category -> output column) per
        # categorical column, offsets included, so transform looks each value up once.
        self.numeric: list[tuple[int, NumericBlock]] = []
        self.codes: list[tuple[int, CodeBlock]] = []
        self.categorical: list[tuple[str, object, dict[object, int]]] = []
        offset = 0
        for block in self.blocks:
            if isinstance(block, NumericBlock | CodeBlock):
                (self.numeric if isinstance(block, NumericBlock) else self.codes).append((offset, block))  # type: ignore[arg-type]
                offset += len(block.columns)
                continue
            for column, fill, lookup in zip(block.columns, block.fill, block.lookups, strict=True):
                self.categorical.append((column, fill, {value: offset + i for value, i in lookup.items()}))
            offset += block.width
        self.classes = self.estimator.classes_
        self.linear = isinstance(self.estimator, LogisticRegression) and len(self.classes) == 2
        if self.linear:
            self.coef_T = self.estimator.coef_.T
            self.intercept = self.estimator.intercept_

    def featured(self, columns: Columns) -> Columns:
        """The columns the preprocessing reads: the records' own, or what the team's feature steps make of them."""
        if not self.features or self.to_frame is None:
            return columns
        frame = self.to_frame(columns)
        for step in self.features:
            frame = step.transform(frame)
        return {name: frame[name].to_numpy() for name in frame.columns}

    def transform(self, columns: Columns) -> np.ndarray:
        """The dense matrix the ColumnTransformer would produce (after the feature steps, if any)."""
        columns = self.featured(columns)
        rows = len(next(iter(columns.values())))
        out = np.zeros((rows, self.width))
        for offset, block in self.numeric:
            # One conversion for the block: None becomes NaN, then takes the imputed value.
            values = np.array([columns[c] for c in block.columns], dtype=np.float64).T
            out[:, offset : offset + len(block.columns)] = block.apply(values)
        for offset, codes in self.codes:
            out[:, offset : offset + len(codes.columns)] = codes.apply(columns, rows)
        if self.categorical:
            # Every categorical column's output position in one pass, then all the ones in one write.
            index = np.fromiter(
                chain.from_iterable(map(lookup.get, columns[name], repeat(-1)) for name, _, lookup in self.categorical),
                np.intp,
                rows * len(self.categorical),
            ).reshape(len(self.categorical), rows)
            if (index < 0).any():
                self._resolve_missing(columns, index)
            flat = index + np.arange(rows) * self.width
            out.put(flat[index >= 0], 1.0)  # unknown categories encode as all zeros
        return out

    def _resolve_missing(self, columns: Columns, index: np.ndarray) -> None:
        """NaN is no dict key: a missing value (None or NaN) takes the imputed category."""
        for i, row in zip(*np.nonzero(index < 0), strict=True):
            name, fill, lookup = self.categorical[i]
            if _missing(columns[name][row]):
                index[i, row] = lookup.get(fill, -1)

    def predict(self, columns: Columns) -> tuple[np.ndarray, np.ndarray]:
        """(labels, class probabilities) for the records in `columns`, as the sklearn pipeline gives them."""
        X = self.transform(columns)
        if self.linear:
            scores = (X @ self.coef_T + self.intercept).reshape(-1)
            proba = np.empty((len(scores), 2))
            proba[:, 1] = expit(scores)
            proba[:, 0] = 1 - proba[:, 1]
            return self.classes[(scores > 0).astype(np.intp)], proba
        # predict() of RandomForest and HistGradientBoosting is argmax of predict_proba;
        # the load-time parity check confirms it for the model at hand.
        proba = self.estimator.predict_proba(X)
        return self.classes[np.argmax(proba, axis=1)], proba


def _identity(transformer: FunctionTransformer) -> bool:
    return transformer.func is None and transformer.inverse_func is None and not transformer.validate


def _code_block(encoder: OrdinalEncoder, columns: list[str]) -> CodeBlock:
    """Category -> code in categories_ order; unknown and missing must both be NaN (native_preprocessing's)."""
    unknown, missing = encoder.unknown_value, encoder.encoded_missing_value
    if encoder.handle_unknown != "use_encoded_value" or not (_nan(unknown) and _nan(missing)):
        raise NotCompilable("OrdinalEncoder must encode unknown and missing values as NaN")
    if getattr(encoder, "_infrequent_enabled", False) or encoder.dtype != np.float64:
        raise NotCompilable("OrdinalEncoder with infrequent categories or codes other than float64")
    lookups = []
    for categories in encoder.categories_:
        lookups.append({value: float(i) for i, value in enumerate(categories.tolist()) if not _missing(value)})
    return CodeBlock(columns, lookups)


def _nan(value: object) -> bool:
    return isinstance(value, float) and value != value


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _compile_block(transformer: Any, columns: list[str]) -> NumericBlock | CategoricalBlock | CodeBlock:
    if transformer == "passthrough" or (isinstance(transformer, FunctionTransformer) and _identity(transformer)):
        return NumericBlock(columns, np.full(len(columns), np.nan), None, None)  # NaN stays NaN: the booster's missing
    if isinstance(transformer, OrdinalEncoder):
        return _code_block(transformer, columns)
    steps = transformer.steps if isinstance(transformer, Pipeline) else [("only", transformer)]
    kinds = [type(step) for _, step in steps]
    imputer = steps[0][1] if kinds[0] is SimpleImputer else None
    rest = [step for _, step in steps[1 if imputer else 0 :]]
    if imputer is not None and imputer.add_indicator:
        raise NotCompilable("SimpleImputer with add_indicator")
    if all(isinstance(s, StandardScaler) for s in rest) and len(rest) <= 1:
        if imputer is None or imputer.strategy not in ("mean", "median", "most_frequent", "constant"):
            raise NotCompilable("numeric block needs a SimpleImputer first")
        scaler = rest[0] if rest else None
        return NumericBlock(
            columns,
            np.asarray(imputer.statistics_, dtype=np.float64),
            None if scaler is None or scaler.mean_ is None else scaler.mean_,
            None if scaler is None or scaler.scale_ is None else scaler.scale_,
        )
    if len(rest) == 1 and isinstance(rest[0], OneHotEncoder):
        encoder = rest[0]
        if encoder.handle_unknown != "ignore" or encoder.drop_idx_ is not None:
            raise NotCompilable("OneHotEncoder must ignore unknowns and drop nothing")
        if getattr(encoder, "_infrequent_enabled", False):
            raise NotCompilable("OneHotEncoder with infrequent categories")
        lookups, width = [], 0
        fill = list(imputer.statistics_) if imputer is not None else [None] * len(columns)
        for categories, fill_value in zip(encoder.categories_, fill, strict=True):
            lookup = {value: width + i for i, value in enumerate(categories.tolist())}
            if fill_value in lookup:
                lookup[None] = lookup[fill_value]  # JSON null is imputed like NaN
            lookups.append(lookup)
            width += len(categories)
        return CategoricalBlock(columns, fill, lookups, width)
    raise NotCompilable(f"unrecognised block {[k.__name__ for k in kinds]}")
