"""Which table format a file is, and the column names a header may hold: shared by every reader and engine.

An input is Parquet by its suffix (`.parquet`, `.pq`) or its magic bytes, else
CSV (optionally compressed, by its suffix); an output's format is --format, else
its suffix. A column named twice is refused: Spark and pandas would rename or drop it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pipeline.core.errors import ConfigError, DataError

CSV, PARQUET = "csv", "parquet"
FORMATS = (CSV, PARQUET)
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_MAGIC = b"PAR1"
COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4", ".br": "brotli"}


def format_of(path: Path) -> str:
    """The format of an input: Parquet by its suffix or magic bytes, else CSV."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return PARQUET
    with contextlib.suppress(OSError):
        if path.is_file():
            with path.open("rb") as f:
                if f.read(4) == PARQUET_MAGIC:
                    return PARQUET
    return CSV


def output_format(output: Path, requested: str | None) -> str:
    """--format, else the output's suffix (.parquet/.pq: Parquet, else CSV); a contradicting suffix is refused."""
    by_suffix = (
        PARQUET if output.suffix.lower() in PARQUET_SUFFIXES else CSV if output.suffix.lower() == ".csv" else None
    )
    if requested is None:
        return by_suffix or CSV
    if requested not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {requested!r}")
    if by_suffix is not None and by_suffix != requested:
        raise ConfigError(f"--format {requested} but the output {output} ends in {output.suffix}; make them agree")
    return requested


def header_names(where: object, header: list[str]) -> list[str]:
    """A CSV header's names, blank ones named as pandas names them; DataError when a name comes twice."""
    names = [name if name.strip() else f"Unnamed: {i}" for i, name in enumerate(header)]
    refuse_duplicates(where, names)
    return names


def refuse_duplicates(where: object, names: list[str]) -> None:
    """DataError naming the first column that appears twice (Spark and pandas would rename or drop it)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{where}: column {name!r} appears more than once in the header; rename or drop one")
        seen.add(name)
