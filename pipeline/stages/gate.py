"""gate and pr-comment: the candidate run against the gates and production, and the report reviewers read."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from api.release import contract
from api.release.check import is_not_found
from api.release.safe_model import RefusedModel
from gates import recent_outcomes as recent_rules
from gates.bootstrap import METRICS, HeldOutAnswers
from gates.evaluate import Production
from gates.evaluate import evaluate as evaluate_gates
from gates.model_card import CardFacts, model_card
from gates.policy_diff import feature_changes, feature_store_changes, policy_changes, rollout_changes
from gates.profile import Drift, compare_profiles
from gates.recent_outcomes import split_newest
from gates.report import COMMENT_MARKER, GateReport
from gates.rules import RuleResult
from gates.schema_diff import SchemaDiff, compare_schemas
from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.ci.provenance import git_sha
from pipeline.core.config import GateParams, Params
from pipeline.core.data import coerce_to_schema
from pipeline.core.errors import CheckFailed, ConfigError
from pipeline.core.feature_training import recorded_features
from pipeline.core.gate_answers import CannotScore, ModelUnderGate, production_answers, recent_answers, score
from pipeline.stages.context import Context
from pipeline.stages.outcomes import Classes, join_log
from pipeline.stages.skew import feature_skew
from pipeline.store import alias_moves, connection, gate_inputs, training_runs
from pipeline.store.gate_record import record_gate
from pipeline.store.prediction_log import PredictionLog

REPORTS = Path("reports")


@dataclass
class Baseline:
    """Production as the gate met it: its version when the gate ran, its answers, and what it changes."""

    version: str | None  # where production stood: promote's compare-and-set checks it has not moved
    production: Production | None = None
    schema: SchemaDiff | None = None
    drift: Drift | None = None
    notes: list[str] = field(default_factory=list)
    features: dict[str, Any] | None = None  # the feature service production was trained from (None: a CSV)
    model: ModelUnderGate | None = None  # production as loaded, to score other rows (recent_outcomes)


def gate_stage(params: Params, run_id: str, base_params: Params | None = None) -> GateReport:
    """Evaluate the gates for a run, record the verdict on the run, then write the local report.

    The registry has the verdict before any local file says anything: a stale
    reports/gate.json is removed first, and written only after the run's tags.
    """
    for stale in (REPORTS / "gate.json", REPORTS / "gate.md", REPORTS / "model_card.md"):
        stale.unlink(missing_ok=True)
    ctx = Context.open(params)
    run = ctx.run(run_id)
    gates = params.gates
    with stage("gate", _rules_text(gates)), tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        try:
            candidate = gate_inputs.candidate(ctx.client, run, Path(tmp) / "candidate")
        except (RefusedModel, KeyError) as exc:
            raise CheckFailed(f"run {run_id} has no loadable logged model: {exc}") from None
        _check_gate_config(gates, run, candidate)
        raw = training_runs.load_raw_test_set(ctx.client, run_id)
        y_true = (raw[training_runs.TARGET_COLUMN].astype(str) == candidate.positive_label).to_numpy()
        try:
            scored = score(candidate, raw, candidate.positive_label)
        except CannotScore as exc:
            raise CheckFailed(f"run {run_id}: {exc}") from None
        baseline = _baseline(ctx, candidate, raw, Path(tmp) / "production")
        extra = [
            *feature_skew(ctx.params, ctx.env.feature_store_url),  # none unless training reads a feature service
            *_recent_outcomes(ctx, candidate, raw, baseline),  # none unless gates.recent_outcomes is set
        ]
        report, card = _evaluate(ctx, run, candidate, raw, y_true, scored, baseline, base_params, extra)
        _record(ctx, run, candidate, report, card, baseline)
        for change in report.policy_changes or []:
            say(f"  policy {change.direction}: {change.message}")
        for rule in report.result.rules:
            say(f"  {'pass' if rule.passed else 'FAIL'} {rule.rule}: {rule.detail}")
    github.write_outputs(ctx.env.github, gate=report.verdict)
    github.write_summary(
        report.to_markdown()
        + f"\n<details><summary>Model card (<code>{contract.MODEL_CARD}</code> on run {run_id})</summary>\n\n"
        + card
        + "\n</details>\n",
        ctx.env.github,
    )
    if not report.passed:
        raise CheckFailed(f"gate failed for run {run_id}; report in {REPORTS / 'gate.md'} and on the run")
    return report


def _rules_text(gates: GateParams) -> str:
    text = ", ".join(
        f"{m} >= {g.min}" if g.max_drop is None else f"{m} >= {g.min}, {m} drop <= {g.max_drop} vs production"
        for m, g in gates.metrics.items()
    )
    recent = gates.recent_outcomes
    if recent is not None:
        text += f", {recent.metric} drop <= {recent.max_drop} vs production on the newest {recent.rows} outcomes"
    return text


def _recent_outcomes(
    ctx: Context, candidate: ModelUnderGate, raw: pd.DataFrame, baseline: Baseline
) -> list[RuleResult]:
    """gates.recent_outcomes: both models on the log's newest labelled rows (training-set held them out).

    No rule when the key is not set; the log is read only then.
    """
    settings = ctx.params.gates.recent_outcomes
    if settings is None:
        return []
    positive = candidate.positive_label
    others = sorted(set(raw[training_runs.TARGET_COLUMN].dropna().astype(str)) - {positive})
    classes = Classes(positive, others[0] if len(others) == 1 else None, "the candidate's test set")
    joined = join_log(ctx.params, PredictionLog.open(ctx.env.prediction_log_uri), classes)
    for segment in joined.unreadable_segments:
        say(f"  recent_outcomes: skipped an unreadable log segment: {segment}")
    newest = split_newest(joined.result.labelled, settings.rows).newest
    features = dict(zip(joined.predictions["prediction_id"], joined.predictions["features"], strict=True))
    gates = ctx.params.gates
    try:
        answers = recent_answers(
            candidate, baseline.production, baseline.model, newest, features, gates.allow_breaking_schema
        )
    except CannotScore as exc:
        return [recent_rules.unscorable(settings.metric, settings.max_drop, len(newest), str(exc))]
    limits = (settings.min_rows, settings.max_drop)
    bootstrap = (gates.bootstrap_samples, gates.confidence, ctx.params.data.seed)
    return [
        recent_rules.judge(
            settings.metric, answers.y_true, answers.candidate, answers.production, limits, bootstrap, answers.skipped
        )
    ]


def _baseline(ctx: Context, candidate: ModelUnderGate, raw: pd.DataFrame, dst: Path) -> Baseline:
    """Production's answers on the candidate's rows, after the release check (PRODUCTION_TRACKING_URI when set)."""
    # PR checks log to an ephemeral store and read production from the team's server (PRODUCTION_TRACKING_URI).
    uri = ctx.env.production_tracking_uri
    client = connection.client_for(uri) if uri else ctx.client
    version = alias_moves.alias_version(client, ctx.model, ctx.registry.production_alias)
    baseline = Baseline(version)
    if version is None:
        return baseline
    try:  # what production was trained from, for the policy diff's feature lines
        production_run = client.get_run(str(client.get_model_version(ctx.model, version).run_id))
        baseline.features = recorded_features(production_run.data.tags, production_run.data.params)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        baseline.notes.append(f"production v{version}'s run is gone: its features are not compared")
    try:
        model, error = gate_inputs.production(client, ctx.model, version, dst, ctx.verify_key)
    except gate_inputs.ProductionRefused as exc:
        say(f"  {exc}")
        if ctx.verify_key is None:  # unsigned: nothing vouches for production, so it is reported, not compared
            baseline.notes.append(f"{exc}; not compared against (unsigned mode)")
            return baseline
        model, error = None, str(exc)  # signed releases: a production the release check refuses fails the gate
    positive, allow = candidate.positive_label, ctx.params.gates.allow_breaking_schema
    baseline.model = model
    baseline.production, note = production_answers(version, model, error, raw, positive, allow)
    baseline.notes += [note] if note else []
    if model is not None:
        baseline.schema = compare_schemas(model.inputs, candidate.inputs)
        if model.profile and candidate.profile:
            baseline.drift = compare_profiles(model.profile, candidate.profile)
        else:
            baseline.notes.append(
                f"no data profile on {'the candidate' if model.profile else f'production v{version}'}"
            )
    return baseline


def _evaluate(
    ctx: Context,
    run: Run,
    candidate: ModelUnderGate,
    raw: pd.DataFrame,
    y_true: np.ndarray,
    scored: HeldOutAnswers,
    baseline: Baseline,
    base_params: Params | None,
    extra: Sequence[RuleResult] = (),
) -> tuple[GateReport, str]:
    """The gate report and the model card (pure, but for the timing it prints); `extra` rules join the rules."""
    gates = ctx.params.gates
    started = time.perf_counter()
    frame = coerce_to_schema(raw, candidate.features)
    result = evaluate_gates(
        gates, ctx.params.data.seed, y_true, frame, scored, candidate.logged, baseline.production,
        baseline.schema, baseline.drift,
    )  # fmt: skip
    say(f"  bootstrap: {gates.bootstrap_samples} paired resamples scored in {time.perf_counter() - started:.2f} s")
    if extra:
        result = dataclasses.replace(result, rules=[*result.rules, *extra])
    changes = None
    if base_params is not None:  # every gate and rollout threshold this params file loosens or tightens
        changes = policy_changes(base_params.gates.model_dump(), gates.model_dump())
        changes += rollout_changes(base_params.rollout.model_dump(), ctx.params.rollout.model_dump())
        changes += feature_store_changes(base_params.feature_store.model_dump(), ctx.params.feature_store.model_dump())
        # The feature definitions the candidate was trained from, against production's (a changed definition).
        against = f"production v{baseline.version}"
        if baseline.version is not None:
            changes += feature_changes(baseline.features, recorded_features(run.data.tags, run.data.params), against)
    signed = "signed" if ctx.signing_key else "unsigned"
    report = GateReport(
        model_name=ctx.model,
        run_id=run.info.run_id,
        git_sha=run.data.tags.get(contract.GIT_SHA, git_sha()),
        result=result,
        confidence=gates.confidence,
        bootstrap_samples=gates.bootstrap_samples,
        policy_changes=changes,
        notes=[*baseline.notes, f"Model artifact {candidate.digest}; verdict {signed}."],
    )
    return report, model_card(report, _card_facts(ctx.params, run, candidate))


def _record(
    ctx: Context, run: Run, candidate: ModelUnderGate, report: GateReport, card: str, baseline: Baseline
) -> None:
    """The reports as run artifacts, the tags (the verdict last, signed when a key is set), then the local files."""
    breaking = baseline.schema.breaking if baseline.schema is not None else []
    record_gate(ctx.client, ctx.model, run, report, card, baseline.version, breaking, candidate.digest, ctx.signing_key)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "gate.json").write_text(report.to_json())
    (REPORTS / "gate.md").write_text(report.to_markdown())
    (REPORTS / "model_card.md").write_text(card)


def _check_gate_config(gates: GateParams, run: Run, candidate: ModelUnderGate) -> None:
    """Gated metrics must be computable or logged, slice columns must be features: exit 2 otherwise."""
    for metric in gates.metrics:
        if metric not in METRICS and metric not in run.data.metrics:
            known = sorted(set(METRICS) | set(run.data.metrics))
            raise ConfigError(f"gates.metrics.{metric}: run {run.info.run_id} has no such metric (it has {known})")
    columns = [f.name for f in candidate.features]
    for column in gates.slices.columns:
        if column not in columns:
            raise ConfigError(f"gates.slices.columns: {column!r} is not a feature of the model (features: {columns})")


def _card_facts(params: Params, run: Run, candidate: ModelUnderGate) -> CardFacts:
    tags = run.data.tags
    return CardFacts(
        model_type=tags.get(contract.MODEL_TYPE, ""),
        hyperparameters={
            k: v for k, v in run.data.params.items() if k.startswith("model.") and k != contract.MODEL_TYPE
        },
        data_path=tags.get(contract.DATA_PATH, ""),
        data_rows=tags.get(contract.DATA_ROWS, ""),
        data_fingerprint=tags.get(contract.DATA_FINGERPRINT, ""),
        target=params.data.target,
        positive_label=candidate.positive_label,
        artifact_digest=candidate.digest,
        intended_use=params.card.intended_use,
        limitations=params.card.limitations,
        profile=candidate.profile,
    )


def pr_comment_stage(path: str) -> str:
    """Post the gate report as the PR's single, updated comment."""
    report = Path(path)
    if not report.is_file():
        raise ConfigError(f"{path} does not exist: run the gate first")
    return github.upsert_pr_comment(report.read_text(), COMMENT_MARKER)
