"""score: a file scored by a released version, loaded exactly as the API loads it."""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.config import Params
from pipeline.core.environment import PipelineEnv
from pipeline.core.errors import CheckFailed, ConfigError

if TYPE_CHECKING:
    from pipeline.scoring.byte_caps import ByteCaps
    from pipeline.scoring.engine import ScoreSummary, ScoringEngine
    from pipeline.scoring.input_source import Source

ENGINES = ("local", "spark")


def byte_caps(env: PipelineEnv | None = None) -> ByteCaps:
    """SCORE_MAX_CELL_BYTES and SCORE_MAX_BATCH_BYTES (whole bytes; default when unset); ConfigError otherwise.

    The settings scoring reads, read once (PipelineEnv) and handed to the engine.
    """
    from pipeline.scoring.byte_caps import BATCH_BYTES, BATCH_SETTING, CELL_BYTES, CELL_SETTING, ByteCaps

    env = env or PipelineEnv.read()
    return ByteCaps(
        _bytes(env.score_max_cell_bytes, CELL_SETTING, CELL_BYTES),
        _bytes(env.score_max_batch_bytes, BATCH_SETTING, BATCH_BYTES),
    )


def _bytes(given: str, name: str, default: int) -> int:
    raw = given.strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of bytes (1 or more), got {raw[:40]!r}")
    return int(raw)


def score_stage(
    params: Params,
    input_path: str,
    output: str,
    version: str | None,
    alias: str | None,
    fmt: str | None = None,
    engine: str = "local",
    master: str | None = None,
) -> str:
    """Batch-score a CSV or Parquet file with a released version (the alias, production by default, or --version).

    `engine` local streams the file through this process; spark scores it on a Spark
    cluster (`master`, default local[*]) and writes Parquet datasets.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if master is not None and engine != "spark":
        raise ConfigError("--master names a Spark cluster: use it with --engine spark")
    caps = byte_caps()  # a malformed SCORE_MAX_CELL_BYTES or SCORE_MAX_BATCH_BYTES is refused first
    # Python's cyclic collector walks every tracked object at each full collection, and importing scikit-learn,
    # SciPy and MLflow sets off several, each longer than the last (6 taking ~1 s in all on a 2M-row run): it is
    # off until the version is loaded, then what was loaded is frozen out of its reach (settled) and it runs again.
    collecting, frozen = gc.isenabled(), gc.get_freeze_count()
    reading = None
    try:
        gc.disable()
        # The local engine starts reading the input now, in a thread of its own, while scikit-learn, MLflow and the
        # version load (seconds, mostly importing): that part of the input is parsed by the time the first row is
        # scored.
        from pipeline.scoring import local_engine

        reading = local_engine.start_reading(Path(input_path), caps) if engine == "local" else None
        return _score(params, input_path, output, version, alias, fmt, engine, master, caps, reading, collecting)
    finally:
        try:
            if reading is not None:
                reading.close()
        finally:  # however it ended (a second signal included), a caller running more in this process collects again
            if not frozen:  # a caller's own freeze is not undone (Python cannot unfreeze only ours)
                gc.unfreeze()
            if collecting:
                gc.enable()


def _settled(collecting: bool) -> None:
    """Start-up is over: what it left is frozen (never walked again) and collection resumes for what comes next."""
    gc.freeze()
    if collecting:
        gc.enable()


def _score(
    params: Params,
    input_path: str,
    output: str,
    version: str | None,
    alias: str | None,
    fmt: str | None,
    engine: str,
    master: str | None,
    caps: ByteCaps,
    reading: Source | None,
    collecting: bool,
) -> str:
    import skops.io  # noqa: F401  # before MLflow: it scans sys.modules when imported (pipeline/cli.py)

    from api.release.check import RefusedVersion
    from api.release.redact import redact_logging
    from api.settings import Settings
    from api.source import RegistrySource
    from pipeline.ci import github
    from pipeline.ci.progress import say, stage
    from pipeline.runtime.output_files import is_local_store, store_paths
    from pipeline.scoring import local_engine
    from pipeline.stages.context import Context
    from pipeline.store import alias_moves, model_versions

    redact_logging("mlflow")  # as the CLI does once a stage's imports brought MLflow's handlers: they came only now
    ctx = Context.open(params)
    model_versions.require_model(ctx.client, ctx.model)
    # What the output and rejects files may never be: the local tracking store, or inside its artifacts.
    artifacts = [ctx.registry.artifact_location]
    if is_local_store(ctx.tracking.uri) and (experiment := ctx.client.get_experiment_by_name(ctx.registry.experiment)):
        artifacts.append(experiment.artifact_location)
    protected = store_paths(ctx.tracking.uri, artifacts)
    scorer: ScoringEngine
    if engine == "spark":
        from pipeline.scoring.spark_engine import SparkEngine  # pyspark, the optional `spark` extra, only when it runs

        # Spark's local Python workers must be this interpreter (its packages); a cluster sets spark.pyspark.python.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        scorer = SparkEngine(ctx.client, master, caps)
    else:
        scorer = local_engine.LocalEngine(caps, reading)
    scorer.check_paths(input_path, output, fmt, protected)  # paths and formats are refused before the version loads
    alias = alias or ctx.registry.production_alias
    settings = Settings.probing_as_the_environment_says(
        model_name=ctx.model, model_alias=alias, max_batch_size=local_engine.CHUNK_ROWS
    )
    source = RegistrySource(settings, client=ctx.client, verify_key=ctx.verify_key)
    if version is None:
        version = alias_moves.alias_version(ctx.client, ctx.model, alias)
        if version is None:
            raise ConfigError(f"model {ctx.model!r} has no alias @{alias}")
    ctx.version(version)  # exit 1 naming it when there is no such version
    with stage("score", f"{input_path} with {ctx.model} version {version} ({engine} engine) -> {output}"):
        started = time.perf_counter()
        try:
            model = source.load(version)
        except RefusedVersion as exc:
            raise CheckFailed(f"version {version} refused: {exc.reason}; nothing scored") from None
        loaded = time.perf_counter() - started
        _settled(collecting)
        summary = scorer.score(model, input_path, output, fmt, protected)
        say(
            f"  {summary.scored:,} rows scored, {summary.rejected:,} rejected in {summary.seconds:.1f}s "
            f"({summary.rows_per_second:,.0f} rows/s; {summary.note})"
            + (f"; rejects with their reasons in {summary.rejects_path}" if summary.rejects_path else "")
        )
    github.write_outputs(predictions=output, scored=str(summary.scored), rejected=str(summary.rejected))
    github.write_summary(_summary(ctx.model, input_path, output, summary, loaded))
    return output


def _summary(model: str, input_path: str, output: str, s: ScoreSummary, loaded: float) -> str:
    rejected = f"{s.rejected:,}" + (f" (row numbers and reasons in `{s.rejects_path}`)" if s.rejects_path else "")
    rows = [
        ("model", f"`{model}` version {s.version}"),
        ("engine", s.engine),
        ("input", f"`{input_path}`"),
        ("output", f"`{output}` ({s.output_format})"),
        ("rows scored", f"{s.scored:,}"),
        ("rows rejected", rejected),
        (
            # The whole stage: rows read while the version loaded would flatter the loop's own rate.
            "rows/s",
            f"{s.rows / max(s.seconds + loaded, 1e-9):,.0f} ({s.rows:,} rows in {s.seconds + loaded:.1f} s, "
            f"loading the version {loaded:.1f} s included)",
        ),
        ("scored by", s.note),
    ]
    return "### Batch scoring\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
