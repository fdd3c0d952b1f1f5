"""quality: live quality per version from delayed outcomes, held to its gate figures, recorded as a signed verdict.

The whole log is joined to every label (stages/outcomes.py); each version with
labelled predictions gets the gate's metrics with the gate's bootstrap
intervals, at the confidence its look budget allows (`rollout.outcomes`), held
to its gate report's figures and to the floors of `gates.metrics`. A canary or
a shadow is also paired with production on the same customers (shown, not a
rule). Each judged version gets a `quality` verdict tag with its figures,
signed when a key is set; each run counts as one look (quality.looks).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from api.release import contract
from api.release.check import stored_json
from api.release.verdicts import quality_statement, quality_verdict
from gates.live_quality import LookBudget, one_per_customer, paired, quality
from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core.config import Params
from pipeline.core.errors import CheckFailed
from pipeline.core.quality_rules import (
    QualityReport,
    VersionQuality,
    gate_figures,
    judge_version,
    judged_metrics,
    keep_recorded_failure,
    rule_count,
)
from pipeline.core.release_keys import sign
from pipeline.stages.context import Context
from pipeline.stages.outcomes import LogJoin, describe_join, join_log, model_classes, parse_since
from pipeline.store import alias_moves, model_versions
from pipeline.store.prediction_log import PredictionLog

REPORTS = Path("reports")
PAIRED_ROLES = ("canary", "shadow")


def quality_stage(params: Params, version: str | None, since: str | None) -> str:
    """Judge each version with labelled predictions (or only `version`); CheckFailed (exit 1) when one fails."""
    start = parse_since(since)
    for stale in (REPORTS / "quality.json", REPORTS / "quality.md"):  # never an older run's report beside a failure
        stale.unlink(missing_ok=True)
    ctx = Context.open(params)
    log = PredictionLog.open(ctx.env.prediction_log_uri)
    model_versions.require_model(ctx.client, ctx.model)
    if version is not None:
        ctx.version(version)  # exit 1 naming it when it does not exist
    classes = model_classes(ctx)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    with stage("quality", f"live quality of {('version ' + version) if version else 'every logged version'}"):
        joined = join_log(params, log, classes, start)
        for line in describe_join(joined):
            say(f"  {line}")
        report = QualityReport(ctx.model, at, start.isoformat() if start else None, joined.counts())
        logged = sorted(set(joined.predictions["version"].dropna()), key=_numeric)
        for name in [version] if version is not None else logged:
            judged = _judge(ctx, joined, name, report)
            if judged is None:
                continue
            report.versions.append(judged)
            if judged.kept_failed is None:  # a failure kept stays as recorded, with its figures and signature
                _record(ctx, judged, at, report.since)
            say(f"  v{name}: {judged.verdict}: {judged.reason}")
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "quality.json").write_text(report.to_json())
    (REPORTS / "quality.md").write_text(report.to_markdown())
    github.write_summary(report.to_markdown(), ctx.env.github)
    overall = "failed" if report.failed else "passed" if any(v.verdict == "passed" for v in report.versions) else ""
    github.write_outputs(ctx.env.github, quality=overall or "inconclusive")
    if report.failed:
        names = ", ".join(f"v{v.version} ({v.reason})" for v in report.failed)
        raise CheckFailed(f"live quality failed for {names}; report in {REPORTS / 'quality.md'}")
    verdicts = ", ".join(f"v{v.version} {v.verdict}" for v in report.versions) or "no version judged"
    return verdicts


def _numeric(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (1 << 62, version)


def _judge(ctx: Context, joined: LogJoin, version: str, report: QualityReport) -> VersionQuality | None:
    """One version's verdict; None (and why, in the report) when it is not a registered version."""
    outcomes = ctx.params.rollout.outcomes
    try:
        mv = ctx.version(version)
    except CheckFailed:
        report.skipped[version] = "not a registered version of the model"
        return None
    labelled = joined.result.labelled
    rows = one_per_customer(labelled[labelled["version"] == version])
    roles = sorted(set(joined.predictions.loc[joined.predictions["version"] == version, "role"].dropna()))
    gated = ctx.params.gates.metrics
    metrics = judged_metrics(gated)
    floors = {m: gated[m].min for m in metrics}
    gate = gate_figures(stored_json(ctx.client, str(mv.run_id), contract.GATE_REPORT), metrics)
    budget = LookBudget(outcomes.alpha, outcomes.max_looks, rule_count(metrics, floors, gate, outcomes.max_drop))
    samples, seed = ctx.params.gates.bootstrap_samples, ctx.params.data.seed
    live = quality(rows, metrics, samples, budget.confidence, seed)
    # A look spends budget only when it can judge: with too few labelled rows it is not counted.
    look = _looks(mv) + 1 if live.rows >= outcomes.min_labelled else max(_looks(mv), 1)
    judged = judge_version(version, roles, live, gate, floors, outcomes.max_drop, budget, look, outcomes.min_labelled)
    recorded = quality_verdict(mv.tags, ctx.verify_key, model=ctx.model, version=version, run_id=str(mv.run_id))
    if recorded is not None:
        judged = keep_recorded_failure(judged, recorded.verdict, str(recorded.figures.get("at") or "") or None)
    production = alias_moves.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
    if production is not None and production != version and set(roles) & set(PAIRED_ROLES):
        theirs = labelled[(labelled["version"] == production) & (labelled["role"] == "production")]
        ours = rows[rows["role"].isin(PAIRED_ROLES)]
        together = paired(ours, theirs, metrics, samples, budget.confidence, seed)
        judged = replace(judged, paired=together, paired_with=production)
    return judged


def _looks(mv: ModelVersion) -> int:
    try:
        return max(int(mv.tags.get(contract.QUALITY_LOOKS, "0")), 0)
    except ValueError:
        return 0


def _record(ctx: Context, judged: VersionQuality, at: str, since: str | None) -> None:
    """The verdict and its figures on the version, signed when a key is set; the look counted."""
    mv = ctx.version(judged.version)
    figures = json.dumps(judged.figures(at, since), sort_keys=True, separators=(",", ":"))
    counted = judged.live.rows >= ctx.params.rollout.outcomes.min_labelled
    tags = {contract.QUALITY_LOOKS: str(judged.look if counted else _looks(mv)), contract.QUALITY_FIGURES: figures}
    if ctx.signing_key is not None:
        statement = quality_statement(mv.tags, model=ctx.model, version=judged.version, run_id=str(mv.run_id),
                                      verdict=judged.verdict, figures=figures)  # fmt: skip
        tags[contract.QUALITY_SIGNATURE] = sign(ctx.signing_key, statement)
    elif contract.QUALITY_SIGNATURE in mv.tags:  # an older signature would not cover these figures
        ctx.client.delete_model_version_tag(ctx.model, judged.version, contract.QUALITY_SIGNATURE)
    for key, value in tags.items():
        ctx.client.set_model_version_tag(ctx.model, judged.version, key, value)
    # The verdict last: it never names figures that are not yet stored beside it.
    ctx.client.set_model_version_tag(ctx.model, judged.version, contract.QUALITY, judged.verdict)
