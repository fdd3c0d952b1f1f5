"""The local engine: a CSV or Parquet file in, predictions out, streamed through this process a batch at a time.

Memory stays flat whatever the input's size: pyarrow reads a block at a time
and each batch is written as soon as it is scored. Three threads share the
work: one reads and parses the next batches (table_reader.py; text features
straight into dictionaries, so each distinct value is validated and looked up
once), this one validates and predicts (batch_scorer.py), one formats and
writes (table_writer.py). Nothing the user has is destroyed: the output and
rejects files are checked against the input, the tracking store and each other
(pipeline/runtime/output_files.py) and written to temp files renamed into place
only when the whole input is scored. In CSV output, text cells a spreadsheet
would run as formulas are neutralised (formula_cells.py).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.ci.progress import say
from pipeline.core.errors import CheckFailed, DataError
from pipeline.runtime.output_files import Protected, atomic_outputs, check_targets
from pipeline.scoring.batch_scorer import BatchScorer, rejects_path_for
from pipeline.scoring.byte_caps import ByteCaps
from pipeline.scoring.engine import ScoreSummary
from pipeline.scoring.input_source import WAITING_BYTES, Source
from pipeline.scoring.table_formats import output_format
from pipeline.scoring.table_reader import input_columns, open_source
from pipeline.scoring.table_writer import Sink

if TYPE_CHECKING:
    from api.model.loaded_model import LoadedModel

CHUNK_ROWS = 65_536  # rows per batch at most
STARTUP_READ_AHEAD = 128 << 20  # bytes of batches read while the version loads (about 1.2M churn rows)
PROGRESS_EVERY_S = {True: 0.2, False: 10.0}  # a terminal's line is redrawn; a log gets a line now and then


class LocalEngine:
    """ScoringEngine on this machine: `caps` held to every batch, `reading` the input start_reading opened (or None)."""

    def __init__(self, caps: ByteCaps, reading: Source | None = None) -> None:
        self.caps, self.reading = caps, reading

    def check_paths(self, input_path: str, output: str, fmt: str | None, protected: Sequence[Protected]) -> None:
        """As check_paths (below), for the stage."""
        check_paths(Path(input_path), Path(output), fmt, protected)

    def score(
        self, model: LoadedModel, input_path: str, output: str, fmt: str | None, protected: Sequence[Protected]
    ) -> ScoreSummary:
        """score_file with this engine's caps and read-ahead."""
        return score_file(
            model, Path(input_path), Path(output), fmt, protected=protected, source=self.reading, caps=self.caps
        )


def start_reading(input_path: Path, caps: ByteCaps | None = None) -> Source | None:
    """`input_path` opened and read ahead (up to STARTUP_READ_AHEAD bytes of batches) while the version loads.

    None when it cannot be opened: score_file opens it again and says why, after the
    checks that come first. The caller closes it (score_file does not).
    """
    try:
        return open_source(input_path, CHUNK_ROWS, read_ahead=STARTUP_READ_AHEAD, caps=caps)
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
    caps: ByteCaps | None = None,
) -> ScoreSummary:
    """Score every row of `input_path` into `output` (CSV or Parquet); rows that fail validation go to the rejects file.

    `fmt` is the output's format (default: by its suffix). Refuses (ConfigError) an output
    or rejects file that is the input, a `protected` path or the other one; both files
    appear only when every batch is scored. `source`: the input as start_reading opened
    it, batches already read (default: opened here). `caps`: the byte caps each batch is
    held to (default: byte_caps.py's; the score stage reads them from the environment).
    """
    fmt, rejects = check_paths(input_path, output, fmt, protected)
    scorer = BatchScorer(model)
    opened = source is None
    if source is None:
        source = open_source(input_path, chunk_rows or CHUNK_ROWS, caps=caps)
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
