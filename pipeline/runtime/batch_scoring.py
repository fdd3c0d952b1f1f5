"""Batch scoring: a CSV or Parquet file in, predictions out, streamed a batch at a time.

The version is loaded exactly as the API loads it (verified digest and
verdicts, skops allow-list, compiled numpy path proven against sklearn).
Each batch is validated by column (pipeline/core/column_validator.py: the
API's verdicts and messages, the RecordValidator called only for rows a
column check flags) and scored on the compiled path fed whole columns
(pipeline/runtime/columnar_model.py). Good rows go to the output with
`prediction`, `probability` and `model_version` added; bad rows go to the
rejects file with their row number (1 = the first data row) and the reason.
BatchScorer is the same for the local engine here and the Spark engine
(pipeline/runtime/spark_scoring.py).

Memory stays flat whatever the input's size: pyarrow reads a block at a time
and each batch is written as soon as it is scored (pipeline/runtime/tables.py).
Three threads share the work: one reads and parses the next batches (text
features straight into dictionaries, so each distinct value is validated and
looked up once), this one validates and predicts, one formats and writes.
Nothing the user has is destroyed: the output and rejects files are checked
against the input, the tracking store and each other (output_files.py) and
written to temp files renamed into place only when the whole input is scored.
In CSV output, text cells a spreadsheet would run as formulas are neutralised.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from api.release.redact import plain_message
from pipeline.ci.progress import say
from pipeline.core.column_validator import Coded, ColumnValidator, Values
from pipeline.core.errors import CheckFailed, DataError
from pipeline.runtime.output_files import Protected, atomic_outputs, check_targets
from pipeline.runtime.tables import (
    CSV,
    WAITING_BYTES,
    Sink,
    Source,
    input_columns,
    open_source,
    output_format,
)

if TYPE_CHECKING:  # scikit-learn and pandas come with the model: `score` starts reading before they are imported
    from api.model.loaded_model import LoadedModel
    from api.model.schema import RequestError

CHUNK_ROWS = 65_536  # rows per batch at most
STARTUP_READ_AHEAD = 128 << 20  # bytes of batches read while the version loads (about 1.2M churn rows)
ROW, REJECT_REASON = "row", "reject_reason"
PREDICTION, PROBABILITY, MODEL_VERSION = "prediction", "probability", "model_version"
ADDED = (PREDICTION, PROBABILITY, MODEL_VERSION)
PROGRESS_EVERY_S = {True: 0.2, False: 10.0}  # a terminal's line is redrawn; a log gets a line now and then


@dataclass(frozen=True)
class ScoreSummary:
    """What a scoring run did: how many rows were scored and rejected, how fast, where the rejects are."""

    version: str
    scored: int
    rejected: int
    seconds: float
    rejects_path: Path | None
    engine: str = "local"
    output_format: str = CSV
    note: str = ""

    @property
    def rows(self) -> int:
        """Input rows: every one is scored or rejected."""
        return self.scored + self.rejected

    @property
    def rows_per_second(self) -> float:
        """Input rows per second of scoring (the version's load not counted)."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Scored:
    """One batch's good rows with their predictions, and its bad rows with row number and reason (None: none)."""

    scored: pa.RecordBatch | None
    rejects: pa.RecordBatch | None


def rejects_path_for(output: Path, fmt: str = CSV) -> Path:
    """`out/p.csv` -> `out/p.rejects.csv` (a name without a suffix gets the format's)."""
    return output.with_name(f"{output.stem}.rejects{output.suffix or '.' + fmt}")


class BatchScorer:
    """One version's validation and prediction of pyarrow batches: the same for every engine."""

    def __init__(self, model: LoadedModel) -> None:
        from pipeline.runtime.columnar_model import ColumnarModel

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

    def score(self, batch: pa.RecordBatch, first_row: int) -> Scored:
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
        return Scored(scored, rejects)

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
        from pipeline.runtime.columnar_model import api_columns

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
            one = {name: _take(values, np.array([i])) for name, values in columns.items()}
            error: RequestError = self.model.unscorable(api_columns(one), exc)
            reasons[int(positions[i])] = str(error).replace("record 0: ", "")
            good[positions[i]] = False
        keep = np.flatnonzero(~too_large)
        rest = {name: _take(values, keep) for name, values in columns.items()}
        return self.columnar.predict(rest, len(keep))


def start_reading(input_path: Path) -> Source | None:
    """`input_path` opened and read ahead (up to STARTUP_READ_AHEAD bytes of batches) while the version loads.

    None when it cannot be opened: score_file opens it again and says why, after the
    checks that come first. The caller closes it (score_file does not).
    """
    try:
        return open_source(input_path, CHUNK_ROWS, read_ahead=STARTUP_READ_AHEAD)
    except (DataError, OSError):
        return None


def score_file(
    model: LoadedModel,
    input_path: Path,
    output: Path,
    fmt: str | None = None,
    chunk_rows: int | None = None,
    protected: Iterable[Protected] = (),
    source: Source | None = None,
) -> ScoreSummary:
    """Score every row of `input_path` into `output` (CSV or Parquet); rows that fail validation go to the rejects file.

    `fmt` is the output's format (default: by its suffix). Refuses (ConfigError) an output
    or rejects file that is the input, a `protected` path or the other one; both files
    appear only when every batch is scored. `source`: the input as start_reading opened
    it, batches already read (default: opened here).
    """
    fmt, rejects = check_paths(input_path, output, fmt, protected)
    scorer = BatchScorer(model)
    opened = source is None
    if source is None:
        source = open_source(input_path, chunk_rows or CHUNK_ROWS)
    source.batches.limit(WAITING_BYTES)  # from here on, a few batches ahead are enough
    try:
        scorer.check_columns(source.schema.names, input_path)
        started = time.perf_counter()
        progress = Progress(source, started)
        with atomic_outputs(output, rejects) as staged:
            out = Sink(staged[output], output, fmt, scorer.output_schema(source.schema))
            bad = Sink(staged[rejects], rejects, fmt, scorer.rejects_schema(source.schema))
            try:
                for batch in source.batches:
                    result = scorer.score(batch, progress.done)
                    if result.scored is not None:
                        out.write(result.scored)
                    if result.rejects is not None:
                        bad.write(result.rejects)
                    progress.advance(batch.num_rows)
                out.close()
                bad.close()
            except BaseException:
                for sink in (out, bad):
                    with contextlib.suppress(Exception):
                        sink.close()
                raise
            progress.finish()
            if bad.rows == 0:
                staged.omit(rejects)  # and an earlier run's rejects file goes
    finally:
        if opened:
            source.close()
    seconds = time.perf_counter() - started
    if out.rows == 0 and bad.rows:
        raise CheckFailed(f"all {bad.rows} rows failed validation; reasons in {rejects}")
    return ScoreSummary(
        model.version, out.rows, bad.rows, seconds, rejects if bad.rows else None, "local", fmt, scorer.columnar.note
    )


def check_paths(
    input_path: Path, output: Path, fmt: str | None, protected: Iterable[Protected] = ()
) -> tuple[str, Path]:
    """The output's format and the rejects file, once the paths are known to be usable (before any loading).

    DataError when the input does not exist or its columns cannot be read; ConfigError for a format that is not known or
    contradicts the output's suffix, and for an output or rejects file that is the input, a
    `protected` path or the other one.
    """
    if not input_path.is_file():
        raise DataError(f"input file {input_path} does not exist")
    fmt = output_format(output, fmt)
    rejects = rejects_path_for(output, fmt)
    check_targets({"output": output, "rejects file": rejects}, [Protected("the input", input_path), *protected])
    input_columns(input_path)  # a header naming a column twice, or a file that is not Parquet after all
    return fmt, rejects


class Progress:
    """The progress line on stderr: rows, rows/s, share done and the time left."""

    def __init__(self, source: Source, started: float) -> None:
        self.source, self.started = source, started
        self.done = 0
        self.tty = sys.stderr.isatty()
        self._shown = started

    def advance(self, rows: int) -> None:
        """Count `rows` more; redraw when it is time."""
        self.done += rows
        now = time.perf_counter()
        if now - self._shown >= PROGRESS_EVERY_S[self.tty]:
            self._shown = now
            self._show(now, final=False)

    def finish(self) -> None:
        """The last line: every row, the rate."""
        self._show(time.perf_counter(), final=True)

    def _show(self, now: float, final: bool) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        total = self.source.total_rows
        share = 1.0 if final else (self.done / total if total else self.source.share_read() or 0.0)
        bar = "█" * int(share * 30) + "·" * (30 - int(share * 30))
        counted = f"{self.done:,}/{total:,} rows" if total is not None else f"{self.done:,} rows"
        line = f"  [{bar}] {counted}, {rate:,.0f} rows/s"
        if final:
            line += f" in {elapsed:.1f}s"
        elif share > 0:
            left = elapsed * (1 - share) / share
            line += f", {share:.0%}, ETA {int(left // 60)}:{int(left % 60):02d}"
        if self.tty:
            print("\r" + line + " " * 8, end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            say(line)


def _take(values: Values, rows: np.ndarray) -> Values:
    return values.take(rows) if isinstance(values, Coded) else values[rows]


def _plain(value: object) -> object:
    """A class label as a Python value (numpy scalars become int, float, str)."""
    return value.item() if isinstance(value, np.generic) else value
