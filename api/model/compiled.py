"""The fitted sklearn pipeline compiled into plain numpy for the request path.

scikit-learn's ColumnTransformer costs milliseconds per call, almost all of it
input validation and frame handling. The fitted statistics are few numbers:
imputation values, means and scales, one-hot vocabularies, coefficients. This
module reads them once at load time and applies them with numpy, in the same
order of operations, so the outputs match the sklearn pipeline. A pipeline
whose shape is not recognised raises NotCompilable and is served by sklearn.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

from api.model.columns import Columns, Values


class NotCompilable(Exception):
    """The pipeline has a shape this module does not translate."""


@dataclass(frozen=True)
class NumericBlock:
    """Numeric columns: imputed, then centred and scaled as the block's StandardScaler does, if it has one."""

    columns: list[str]
    fill: np.ndarray  # imputation value per column
    mean: np.ndarray | None
    scale: np.ndarray | None

    # The same as Python floats, for the one-record path (set once, below).
    fill_list: list[float] = field(init=False, repr=False, compare=False)
    mean_list: list[float | None] = field(init=False, repr=False, compare=False)
    scale_list: list[float | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        width = len(self.columns)
        object.__setattr__(self, "fill_list", self.fill.tolist())
        object.__setattr__(self, "mean_list", [None] * width if self.mean is None else self.mean.tolist())
        object.__setattr__(self, "scale_list", [None] * width if self.scale is None else self.scale.tolist())

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

    def row(self, values: list[Any]) -> bytes:
        """The block's output for one record's values (None or NaN where missing), as float64 bytes.

        Float64 scalars: each subtraction and division rounds as numpy's elementwise one does.
        """
        out = []
        for value, fill, mean, scale in zip(values, self.fill_list, self.mean_list, self.scale_list, strict=True):
            number = fill if value is None else float(value)
            if number != number:  # NaN: missing
                number = fill
            if mean is not None:
                number -= mean
            if scale is not None:
                number /= scale
            out.append(number)
        return _floats(*out)


@dataclass(frozen=True)
class CodeBlock:
    """Categorical columns as their codes (an OrdinalEncoder): one output column each, NaN when unknown or missing."""

    columns: list[str]
    lookups: list[dict[object, float]]  # category -> code, per input column


@dataclass(frozen=True)
class CategoricalBlock:
    """Categorical columns: imputed, then one-hot encoded into `width` output columns."""

    columns: list[str]
    fill: list[object]  # imputation value per column
    lookups: list[dict[object, int]]  # category -> output column, per input column
    width: int
    sizes: list[int] = field(default_factory=list)  # categories per input column, in order


@dataclass(frozen=True)
class TextColumn:
    """One text column's slice of the matrix per value, as float64 bytes: its one-hot ones and zeros, or its code.

    Joining the values' bytes makes the column's slice in C loops (a lookup pass,
    a join), where a lookup per value and a scatter of ones cost Python calls. A
    value that is no key is `missing`'s bytes when it is missing (None or NaN: the
    imputed category's; NaN equals nothing, so it is no key) and `unknown`'s
    otherwise (an unseen category: all zeros, or a NaN code).
    """

    name: str
    start: int  # its first output column
    size: int  # its output columns
    slices: dict[object, bytes]  # a plain dict: a subclass's lookups (__missing__) cost a Python call each
    missing: bytes
    unknown: bytes

    def joined(self, values: Values) -> bytes:
        """The column's (rows, size) slice of the matrix for two values or more, as bytes."""
        try:
            return b"".join(itemgetter(*values)(self.slices))
        except KeyError:  # an unseen category or a NaN: each value on its own
            return b"".join(map(self.one, values))

    def one(self, value: object) -> bytes:
        """One value's slice."""
        found = self.slices.get(value)
        if found is not None:
            return found
        return self.missing if _missing(value) else self.unknown


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
        # categorical column, offsets included (batch scoring reads them: pipeline/scoring/compiled_columns.py).
        # transform reads `text` (a TextColumn per text column) and the numeric blocks; one record's row is the
        # join of `parts`' bytes, in output order.
        self.numeric: list[tuple[int, NumericBlock]] = []
        self.codes: list[tuple[int, CodeBlock]] = []
        self.categorical: list[tuple[str, object, dict[object, int]]] = []
        self.text: list[TextColumn] = []
        self.parts: list[NumericBlock | TextColumn] = []
        offset = 0
        for block in self.blocks:
            if isinstance(block, NumericBlock):
                self.numeric.append((offset, block))
                self.parts.append(block)
                offset += len(block.columns)
                continue
            if isinstance(block, CodeBlock):
                self.codes.append((offset, block))
                for column, code_of in zip(block.columns, block.lookups, strict=True):
                    codes: dict[object, bytes] = {value: _floats(code) for value, code in code_of.items()}
                    nan = _floats(np.nan)
                    self._add(TextColumn(column, offset, 1, {**codes, None: nan}, nan, nan))
                    offset += 1
                continue
            first = 0  # the block numbers its columns' categories one after another: this column's first
            for column, fill, lookup, size in zip(block.columns, block.fill, block.lookups, block.sizes, strict=True):
                self.categorical.append((column, fill, {value: offset + i for value, i in lookup.items()}))
                ones = {value: _one_hot(size, i - first) for value, i in lookup.items()}
                zeros = _one_hot(size, None)
                missing = ones.get(fill, zeros)
                self._add(TextColumn(column, offset + first, size, {**ones, None: missing}, missing, zeros))
                first += size
            offset += block.width
        self.classes = self.estimator.classes_
        self.class_list = self.classes.tolist()  # a label as labels.tolist() gives it
        self.linear = isinstance(self.estimator, LogisticRegression) and len(self.classes) == 2
        if self.linear:
            self.coef_T = self.estimator.coef_.T
            self.intercept = self.estimator.intercept_

    def _add(self, column: TextColumn) -> None:
        self.text.append(column)
        self.parts.append(column)

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
        if rows == 1:
            return self._row(columns)
        out = np.empty((rows, self.width))  # every column is written below
        for offset, block in self.numeric:
            # One conversion for the block: None becomes NaN, then takes the imputed value.
            values = np.array([columns[c] for c in block.columns], dtype=np.float64).T
            out[:, offset : offset + len(block.columns)] = block.apply(values)
        for text in self.text if rows else ():
            slices = np.frombuffer(text.joined(columns[text.name]), np.float64).reshape(rows, text.size)
            out[:, text.start : text.start + text.size] = slices
        return out

    def _row(self, columns: Columns) -> np.ndarray:
        """One record's (1, width) matrix, its parts' bytes joined: the same numbers, without per-column arrays."""
        parts: list[bytes] = []
        for part in self.parts:
            if isinstance(part, NumericBlock):
                parts.append(part.row([columns[c][0] for c in part.columns]))
            else:
                value = columns[part.name][0]
                parts.append(part.slices.get(value) or part.one(value))  # a slice is never empty
        return np.frombuffer(bytearray().join(parts), np.float64).reshape(1, self.width)

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

    def answer(self, columns: Columns, positive: int) -> tuple[list[object], list[float]]:
        """The labels and class `positive`'s probabilities as lists; one record of a linear model in scalars.

        The scalar path does predict's operations on the same numbers: the same matrix
        product (on a one-row matrix numpy takes one dot product either way), then IEEE
        additions and expit on float64 scalars, which round as numpy's array operations do.
        """
        if not self.linear or self.features or len(next(iter(columns.values()))) != 1:
            labels, proba = self.predict(columns)
            return labels.tolist(), proba[:, positive].tolist()
        score = float((self._row(columns) @ self.coef_T)[0, 0]) + float(self.intercept[0])
        one = float(expit(score))
        return [self.class_list[1 if score > 0 else 0]], [one if positive == 1 else 1 - one]


def _floats(*values: float) -> bytes:
    """Numbers as the bytes of a float64 array."""
    return struct.pack(f"{len(values)}d", *values)


def _one_hot(size: int, hot: int | None) -> bytes:
    """A one-hot slice of `size` columns as float64 bytes (all zeros: `hot` None)."""
    return _floats(*(1.0 if i == hot else 0.0 for i in range(size)))


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
        return CategoricalBlock(columns, fill, lookups, width, [len(c) for c in encoder.categories_])
    raise NotCompilable(f"unrecognised block {[k.__name__ for k in kinds]}")
