"""One version's validation and prediction of pyarrow batches: the same for the local and the Spark engine.

The version is loaded exactly as the API loads it (verified digest and
verdicts, skops allow-list, compiled numpy path proven against sklearn).
Each batch is validated by column (column_validator.py: the API's verdicts and
messages, the RecordValidator called only for rows a column check flags) and
scored on the compiled path fed whole columns (compiled_columns.py). Good rows
get `prediction`, `probability` and `model_version`; bad rows get their row
number (1 = the first data row) and the reason, for the rejects file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from api.release.redact import plain_message
from pipeline.core.errors import DataError
from pipeline.scoring.column_validator import ColumnValidator
from pipeline.scoring.column_values import Coded, Values, take_values
from pipeline.scoring.table_formats import CSV

if TYPE_CHECKING:  # scikit-learn and pandas come with the model: `score` starts reading before they are imported
    from api.model.loaded_model import LoadedModel
    from api.model.schema import RequestError

ROW, REJECT_REASON = "row", "reject_reason"
PREDICTION, PROBABILITY, MODEL_VERSION = "prediction", "probability", "model_version"
ADDED = (PREDICTION, PROBABILITY, MODEL_VERSION)


@dataclass(frozen=True)
class ScoredBatch:
    """One batch's good rows with their predictions, and its bad rows with row number and reason (None: none)."""

    scored: pa.RecordBatch | None
    rejects: pa.RecordBatch | None


def rejects_path_for(output: Path, fmt: str = CSV) -> Path:
    """`out/p.csv` -> `out/p.rejects.csv` (a name without a suffix gets the format's)."""
    return output.with_name(f"{output.stem}.rejects{output.suffix or '.' + fmt}")


class BatchScorer:
    """One version's validation and prediction of pyarrow batches: the same for every engine."""

    def __init__(self, model: LoadedModel) -> None:
        from pipeline.scoring.compiled_columns import ColumnarModel

        self.model = model
        self.validator = ColumnValidator(model.features, model.validator)
        self.columnar = ColumnarModel(model)
        self.labels = pa.array([_plain(c) for c in self.columnar.classes])

    def check_columns(self, names: list[str], where: object) -> None:
        """DataError (exit 2) when a required feature is missing or the input has a column the output adds."""
        missing = [f.name for f in self.model.features if f.required and f.name not in names]
        if missing:
            raise DataError(f"{where}: required column(s) {', '.join(map(repr, missing))} missing")
        taken = [name for name in (*ADDED, ROW, REJECT_REASON) if name in names]
        if taken:
            raise DataError(
                f"{where}: column(s) {', '.join(map(repr, taken))} would be written twice: the output adds "
                f"{', '.join(ADDED)} and the rejects file {ROW} and {REJECT_REASON}; rename them in the input"
            )

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """The predictions' schema for an input's schema."""
        added = [(PREDICTION, self.labels.type), (PROBABILITY, pa.float64()), (MODEL_VERSION, pa.string())]
        return pa.schema([*schema, *(pa.field(n, t) for n, t in added)])

    def rejects_schema(self, schema: pa.Schema) -> pa.Schema:
        """The rejects' schema for an input's schema."""
        return pa.schema([pa.field(ROW, pa.int64()), *schema, pa.field(REJECT_REASON, pa.string())])

    def score(self, batch: pa.RecordBatch, first_row: int) -> ScoredBatch:
        """Validate and predict `batch`, whose first row is input row `first_row + 1`."""
        checked = self.validator.check(batch)
        good, reasons, columns = checked.good.copy(), dict(checked.reasons), checked.columns
        try:
            labels, positive = self.columnar.predict(columns, checked.scored)
        except ValueError as exc:  # a tree model and a number beyond float32: the API's 422, here per row
            labels, positive = self._without_unscorable(exc, good, reasons, columns, first_row)
        scored = None
        if good.any():
            rows = int(good.sum())
            base = batch if good.all() else batch.filter(pa.array(good))
            added = [
                self.labels.take(pa.array(labels)),
                pa.array(positive, type=pa.float64()),
                pa.repeat(pa.scalar(self.model.version, pa.string()), rows),
            ]
            scored = pa.RecordBatch.from_arrays([*base.columns, *added], names=[*batch.schema.names, *ADDED])
        rejects = None
        if reasons:
            positions = np.array(sorted(reasons), dtype=np.int64)
            base = batch.take(pa.array(positions))
            rows_column = pa.array(positions + first_row + 1, type=pa.int64())
            why = pa.array([reasons[p] for p in positions.tolist()], type=pa.string())
            rejects = pa.RecordBatch.from_arrays(
                [rows_column, *base.columns, why], names=[ROW, *batch.schema.names, REJECT_REASON]
            )
        return ScoredBatch(scored, rejects)

    def _without_unscorable(
        self,
        exc: ValueError,
        good: np.ndarray,
        reasons: dict[int, str],
        columns: dict[str, Values],
        first_row: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reject the rows with numbers the model cannot take (worded by LoadedModel.unscorable), score the rest."""
        from api.model.loaded_model import FLOAT32_MAX
        from pipeline.scoring.compiled_columns import api_columns

        too_large = np.zeros(int(good.sum()), dtype=bool)
        for spec in self.model.features:
            values = columns[spec.name]
            if spec.numeric and not isinstance(values, Coded):
                too_large |= np.abs(np.asarray(values, dtype=np.float64)) > FLOAT32_MAX
        if not too_large.any():
            rows = f"rows {first_row + 1}-{first_row + len(good)}"
            raise DataError(f"the model cannot score {rows}: {plain_message(exc, 200) or 'no reason given'}") from None
        positions = np.flatnonzero(good)
        for i in np.flatnonzero(too_large).tolist():
            one = {name: take_values(values, np.array([i])) for name, values in columns.items()}
            error: RequestError = self.model.unscorable(api_columns(one), exc)
            reasons[int(positions[i])] = str(error).replace("record 0: ", "")
            good[positions[i]] = False
        keep = np.flatnonzero(~too_large)
        rest = {name: take_values(values, keep) for name, values in columns.items()}
        return self.columnar.predict(rest, len(keep))


def _plain(value: object) -> object:
    """A class label as a Python value (numpy scalars become int, float, str)."""
    return value.item() if isinstance(value, np.generic) else value
