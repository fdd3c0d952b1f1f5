"""What the score stage asks of an engine (check the paths, then score), and what a run reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.scoring.table_formats import CSV

if TYPE_CHECKING:
    from api.model.loaded_model import LoadedModel
    from pipeline.runtime.output_files import Protected


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


class ScoringEngine(Protocol):
    """An engine the score stage runs: LocalEngine (local_engine.py) or SparkEngine (spark_engine.py)."""

    def check_paths(self, input_path: str, output: str, fmt: str | None, protected: Sequence[Protected]) -> None:
        """ConfigError or DataError when the paths or the format cannot be used; called before the version loads."""
        ...

    def score(
        self, model: LoadedModel, input_path: str, output: str, fmt: str | None, protected: Sequence[Protected]
    ) -> ScoreSummary:
        """Score every row of `input_path` into `output`, rows that fail validation into the rejects beside it."""
        ...
