"""Batch scoring: a CSV in, predictions out, with the API's validation and fast path.

The version is loaded exactly as the API loads it (verified digest and
verdicts, skops allow-list, compiled numpy path proven against sklearn). A
chunk whose columns are all clean (numbers parse, required fields present) is
scored column-wise at once; a chunk with a bad row is validated row by row by
the API's RecordValidator, so every bad row lands in the rejects file with the
API's own message and the good ones are scored.

Nothing the user has is destroyed: the output and rejects files are checked
against the input, the tracking store and each other (pipeline/output_files.py)
and written to temp files renamed into place only when the whole input is
scored. Text cells a spreadsheet would run as formulas are neutralised in both
(pipeline/formula_cells.py).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from api.model.loaded_model import LoadedModel
from api.model.schema import RequestError
from pipeline.ci.progress import say
from pipeline.core.errors import CheckFailed, DataError
from pipeline.core.formula_cells import neutralise_frame
from pipeline.runtime.output_files import Protected, atomic_outputs, check_targets

CHUNK_ROWS = 10_000
REJECT_REASON = "reject_reason"


@dataclass(frozen=True)
class ScoreSummary:
    """What a scoring run did: the version, rows scored and rejected, the time, and the rejects file if any."""

    version: str
    scored: int
    rejected: int
    seconds: float
    rejects_path: Path | None


def rejects_path_for(output: Path) -> Path:
    """The rejects file beside `output`: OUTPUT.rejects.csv (its own suffix when it has one)."""
    return output.with_name(f"{output.stem}.rejects{output.suffix or '.csv'}")


def score_csv(
    model: LoadedModel,
    input_path: Path,
    output: Path,
    chunk_rows: int | None = None,
    protected: Iterable[Protected] = (),
) -> ScoreSummary:
    """Score every row of `input_path` into `output`; rows that fail validation go to the rejects file.

    Refuses (ConfigError) an output or rejects file that is the input, a `protected` path
    or the other one; both files appear only when every chunk is scored.
    """
    if not input_path.is_file():
        raise DataError(f"input file {input_path} does not exist")
    rejects = rejects_path_for(output)
    check_targets({"output": output, "rejects file": rejects}, [Protected("the input", input_path), *protected])
    _check_header(input_path)
    total = _count_rows(input_path)
    started = time.perf_counter()
    scored = rejected = done = 0
    with (
        atomic_outputs(output, rejects) as staged,
        staged[output].open("w", newline="") as out,
        staged[rejects].open("w", newline="") as bad,
    ):
        for chunk in _chunks(input_path, chunk_rows or CHUNK_ROWS):
            missing = [f.name for f in model.features if f.required and f.name not in chunk.columns]
            if missing:
                raise DataError(f"{input_path}: required column(s) {', '.join(map(repr, missing))} missing")
            reasons: dict[int, str]
            columns = _clean_columns(model, chunk)
            if columns is not None:  # every row well formed: no record-by-record validation
                rows, reasons = chunk, {}
            else:
                good, reasons = _validate(model, chunk)
                rows = chunk.iloc[[i for i, _ in good]]
                columns = model.validator.columns([r for _, r in good]) if good else None
            if columns is not None:
                prediction = model.predict_columns(columns)
                result = rows.assign(
                    prediction=prediction.labels, probability=prediction.probabilities, model_version=model.version
                )
                neutralise_frame(result).to_csv(out, index=False, header=scored == 0)
                scored += len(result)
            if reasons:
                failed = chunk.iloc[list(reasons)].assign(**{REJECT_REASON: list(reasons.values())})
                failed.insert(0, "row", [done + i + 1 for i in reasons])
                neutralise_frame(failed).to_csv(bad, index=False, header=rejected == 0)
                rejected += len(failed)
            done += len(chunk)
            _progress(done, total, started)
        if rejected == 0:
            staged.omit(rejects)  # and an earlier run's rejects file goes
    if scored == 0 and rejected:
        raise CheckFailed(f"all {rejected} rows failed validation; reasons in {rejects}")
    return ScoreSummary(model.version, scored, rejected, time.perf_counter() - started, rejects if rejected else None)


def _chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    try:
        yield from pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=rows)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path} is not a readable CSV: {str(exc).strip()}") from None


def _check_header(path: Path) -> None:
    """Refuse a header that names a column twice: pandas would rename the second (`x.1`) and ignore it."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV: {str(exc).strip()}") from None
    seen = set()
    for name in header:
        if name in seen and name.strip():  # blank names (trailing commas) are pandas' "Unnamed: N"
            raise DataError(f"{path}: column {name!r} appears more than once in the header; rename or drop one")
        seen.add(name)


def _count_rows(path: Path) -> int:
    with path.open("rb") as f:
        return max(sum(1 for _ in f) - 1, 0)


def _records(model: LoadedModel, chunk: pd.DataFrame) -> list[dict[str, Any]]:
    """The chunk's rows as the JSON records a client would send: numbers parsed, blanks left out."""
    columns: dict[str, list[Any]] = {}
    for spec in model.features:
        if spec.name not in chunk.columns:
            continue
        text = chunk[spec.name].str.strip()  # blank or spaces: missing, as in training (pipeline/data.py)
        if spec.numeric:
            parsed = pd.to_numeric(text, errors="coerce")
            columns[spec.name] = [
                None if t == "" else (float(p) if not math.isnan(p) else t) for t, p in zip(text, parsed, strict=True)
            ]
        elif spec.type == "boolean":
            columns[spec.name] = [None if t == "" else {"true": True, "false": False}.get(t.lower(), t) for t in text]
        else:
            columns[spec.name] = [None if t == "" else t for t in text]
    return [{k: values[i] for k, values in columns.items() if values[i] is not None} for i in range(len(chunk))]


def _clean_columns(model: LoadedModel, chunk: pd.DataFrame) -> dict[str, Any] | None:
    """Column-wise values when every row is valid (what the validator would accept), else None.

    Whole columns at once: a number column parses completely, required fields are
    never blank, no value is infinite. Anything else (or a boolean feature) goes
    record by record, so each bad row gets the validator's own message. A column
    is a list of values, or a float array for a number.
    """
    columns: dict[str, Any] = {}
    for spec in model.features:
        if spec.name not in chunk.columns:
            if spec.required:
                return None
            columns[spec.name] = [None] * len(chunk)
            continue
        text = chunk[spec.name].str.strip()
        blank = (text == "").to_numpy()
        if spec.required and blank.any():
            return None
        if spec.numeric:
            parsed = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
            if (np.isnan(parsed) & ~blank).any() or np.isinf(parsed).any():
                return None
            columns[spec.name] = parsed  # blanks are NaN: missing, as None is
        elif spec.type == "string":
            columns[spec.name] = [None if b else t for t, b in zip(text.tolist(), blank, strict=True)]
        else:
            return None
    return columns


def _validate(model: LoadedModel, chunk: pd.DataFrame) -> tuple[list[tuple[int, dict[str, Any]]], dict[int, str]]:
    """(position, validated record) of good rows and {position: reason} of bad ones."""
    records = _records(model, chunk)
    validator = model.validator
    try:
        return list(enumerate(validator.validate({"records": records}))), {}
    except RequestError:
        pass
    good: list[tuple[int, dict[str, Any]]] = []
    bad: dict[int, str] = {}
    for i, record in enumerate(records):
        try:
            good.append((i, validator.validate({"records": [record]})[0]))
        except RequestError as exc:
            bad[i] = str(exc).replace("record 0: ", "")
    return good, bad


def _progress(done: int, total: int, started: float) -> None:
    share = done / total if total else 1.0
    bar = "█" * int(share * 30) + "·" * (30 - int(share * 30))
    rate = done / max(time.perf_counter() - started, 1e-9)
    line = f"  [{bar}] {done:,}/{total:,} rows, {rate:,.0f} rows/s"
    if sys.stderr.isatty():
        print("\r" + line, end="" if done < total else "\n", file=sys.stderr, flush=True)
    else:
        say(line)
