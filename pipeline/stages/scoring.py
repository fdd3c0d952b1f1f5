"""score: a file scored by a released version, loaded exactly as the API loads it."""

from __future__ import annotations

from pathlib import Path

from api.release.check import RefusedVersion
from api.settings import Settings
from api.source import RegistrySource
from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core.config import Params
from pipeline.core.errors import CheckFailed, ConfigError
from pipeline.runtime import batch_scoring
from pipeline.runtime.output_files import is_local_store, store_paths
from pipeline.stages.context import Context
from pipeline.store import registry


def score_stage(params: Params, input_path: str, output: str, version: str | None, alias: str | None) -> str:
    """Batch-score a CSV with a released version (the alias, production by default, or --version)."""
    ctx = Context.open(params)
    registry.require_model(ctx.client, ctx.model)
    # What the output and rejects files may never be: the local tracking store, or inside its artifacts.
    artifacts = [ctx.registry.artifact_location]
    if is_local_store(ctx.tracking.uri) and (experiment := ctx.client.get_experiment_by_name(ctx.registry.experiment)):
        artifacts.append(experiment.artifact_location)
    protected = store_paths(ctx.tracking.uri, artifacts)
    alias = alias or ctx.registry.production_alias
    settings = Settings(model_name=ctx.model, model_alias=alias, max_batch_size=batch_scoring.CHUNK_ROWS)
    source = RegistrySource(settings, client=ctx.client, verify_key=ctx.verify_key)
    if version is None:
        version = registry.alias_version(ctx.client, ctx.model, alias)
        if version is None:
            raise ConfigError(f"model {ctx.model!r} has no alias @{alias}")
    ctx.version(version)  # exit 1 naming it when there is no such version
    with stage("score", f"{input_path} with {ctx.model} version {version} -> {output}"):
        try:
            model = source.load(version)
        except RefusedVersion as exc:
            raise CheckFailed(f"version {version} refused: {exc.reason}; nothing scored") from None
        summary = batch_scoring.score_csv(model, Path(input_path), Path(output), protected=protected)
        say(
            f"  {summary.scored:,} rows scored, {summary.rejected:,} rejected in {summary.seconds:.1f}s"
            + (f"; rejects with their reasons in {summary.rejects_path}" if summary.rejects_path else "")
        )
    github.write_outputs(predictions=output, rejected=str(summary.rejected))
    return output
