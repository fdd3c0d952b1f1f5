"""rollout and watch: a version reaches production through shadow and canary steps judged on live metrics, then bakes.

rollout points the canary alias at the version, has the replicas shadow it,
then route a growing share of customers to it, judging each phase's rules on
that phase's window of live metrics; it promotes through promote at the end.
A failed rule (or a phase that never sees its traffic) aborts: the canary
answers nothing again, its alias is removed, the ledger and the version say
why, and production never moved. watch judges the bake rules after a
promotion and rolls back through rollback when one fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from api.release import contract
from api.release.traffic import Traffic
from gates.live_rules import (
    Snapshot,
    VersionWindow,
    ceiling,
    feature_psi,
    psi,
    shadow_counts,
    shadow_score_shares,
    window,
)
from gates.release_policy import check_promotion
from gates.rollout_report import Phase, RolloutReport
from gates.rules import RuleResult
from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core.config import Params
from pipeline.core.errors import CheckFailed, ConfigError
from pipeline.core.release_keys import sign
from pipeline.runtime.live_metrics import MetricsSource, metrics_source
from pipeline.stages.context import Context
from pipeline.stages.release import promote_stage, rollback_stage
from pipeline.store import registry
from pipeline.store.release_lock import release_lock

REPORTS = Path("reports")


class Aborted(Exception):
    """A phase's rule failed, or the phase never saw the traffic it needs: the rollout stops."""


def rollout_stage(params: Params, version: str, api_urls: Sequence[str]) -> str:
    """Shadow, then each canary step, then promote; returns the version. CheckFailed (exit 1) when it aborts."""
    ctx = Context.open(params)
    source = metrics_source(api_urls)
    registry.require_model(ctx.client, ctx.model)
    mv = ctx.version(version)
    production = registry.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
    candidate = registry.alias_version(ctx.client, ctx.model, ctx.registry.candidate_alias)
    if not check_promotion(registry.version_state(mv), candidate, production):
        say(f"  @{ctx.registry.production_alias} already points at {version}; nothing to roll out")
        return version
    _, refusal = ctx.release_refusal(mv)
    if refusal:
        raise CheckFailed(f"version {version} refused: {refusal}; nothing rolled out")
    if production is None:  # nothing serves yet: nothing to shadow or split traffic with
        say("  production points at nothing: no live traffic to judge the version on; promoting it")
        promote_stage(params, version)
        return version
    report = RolloutReport("rollout", ctx.model, version, production, source.describe())
    plan = ", ".join(["shadow", *(f"{s.weight} %" for s in params.rollout.steps)])
    with stage("rollout", f"version {version} against production {production}: {plan}"):
        try:
            _run(ctx, source, report, version, production)
            promote_stage(params, version)
            report.verdict = "passed"
        except (Aborted, CheckFailed) as exc:
            report.verdict, report.reason = "aborted", str(exc)
        except BaseException as exc:  # interrupted, or the metrics or the registry failed: abort, then say so
            report.verdict, report.reason = "aborted", f"stopped: {exc}"
            raise
        finally:  # interrupted or not: the canary answers nothing again, and its alias goes
            _end(ctx, version, report.reason or f"rollout {report.verdict}")
            _record(ctx, mv, report)
    if report.verdict != "passed":
        now = registry.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
        where = f"production is still {production}" if now == production else f"production is {now or 'nothing'}"
        raise CheckFailed(f"rollout of version {version} aborted: {report.reason}; {where}, the rollout moved nothing")
    return version


def _run(ctx: Context, source: MetricsSource, report: RolloutReport, version: str, production: str) -> None:
    rules, shadow = ctx.params.rollout.step_rules, ctx.params.rollout.shadow
    _traffic(ctx, Traffic("shadow", version, 0, shadow.sample_share), production, move_alias=True)
    phase = Phase("shadow", "shadow", 0)
    report.phases.append(phase)

    def shadow_rules(w: Snapshot) -> list[RuleResult | None]:
        scored, disagreed = shadow_counts(w, version)
        theirs, ours = shadow_score_shares(w, version)  # on the same records: only the models differ
        phase.figures = {"shadowed records": int(scored), "disagreed": int(disagreed)}
        score_psi = psi(theirs, ours) if theirs and len(theirs) == len(ours) else None
        return [
            ceiling("max_disagreement", "disagreement", shadow.max_disagreement,
                    disagreed / scored if scored else None, "share of records labelled differently"),
            ceiling("max_score_psi", "score_psi", shadow.max_score_psi, score_psi,
                    "PSI of its scores against production's on the same records"),
        ]  # fmt: skip

    _phase(ctx, source, phase, lambda w: shadow_counts(w, version)[0], shadow.min_requests, shadow.min_duration_s,
           shadow_rules, production)  # fmt: skip
    for step in ctx.params.rollout.steps:
        _traffic(ctx, Traffic("canary", version, step.weight, 0.0), production)
        phase = Phase(f"canary {step.weight} %", "canary", step.weight)
        report.phases.append(phase)

        def step_rules(w: Snapshot, phase: Phase = phase) -> list[RuleResult | None]:
            ours, theirs = VersionWindow.of(w, version), VersionWindow.of(w, production)
            phase.figures = {
                f"v{version} requests": int(ours.requests), f"v{production} requests": int(theirs.requests),
                f"v{version} p99 ms": _round(ours.p99_ms), f"v{production} p99 ms": _round(theirs.p99_ms),
            }  # fmt: skip
            ratio = ours.p99_ms / theirs.p99_ms if ours.p99_ms is not None and theirs.p99_ms else None
            return [
                ceiling("max_error_ratio", "error_ratio", rules.max_error_ratio, ours.error_ratio, "5xx per request"),
                ceiling("max_p99_ms", "p99_ms", rules.max_p99_ms, ours.p99_ms, "p99 latency (ms)"),
                ceiling("max_p99_ratio", "p99_ratio", rules.max_p99_ratio, ratio, "p99 over production's"),
                ceiling("max_score_psi", "score_psi", rules.max_score_psi, _score_psi(theirs, ours),
                        "PSI of its scores against production's"),
            ]  # fmt: skip

        _phase(ctx, source, phase, lambda w: VersionWindow.of(w, version).requests, step.min_requests,
               step.min_duration_s, step_rules, production)  # fmt: skip


def _phase(
    ctx: Context,
    source: MetricsSource,
    phase: Phase,
    seen: Callable[[Snapshot], float],
    min_requests: int,
    min_duration_s: float,
    rules: Callable[[Snapshot], list[RuleResult | None]],
    production: str,
) -> None:
    """Wait until the phase has its requests and its time, then judge its rules on its window; Aborted if not."""
    settings = ctx.params.rollout
    say(f"  {phase.name}: judging after {min_requests} requests and {min_duration_s:g} s")
    start, started = source.snapshot(), time.monotonic()
    while True:
        time.sleep(settings.poll_s)
        current, elapsed = window(start, source.snapshot()), time.monotonic() - started
        phase.seconds = elapsed
        count = seen(current)
        if count >= min_requests and elapsed >= min_duration_s:
            break
        if elapsed > settings.phase_timeout_s:
            phase.note = (
                f"the new version answered {count:.0f} of the {min_requests} requests this phase needs "
                f"in {settings.phase_timeout_s:g} s (refused by the replicas, or no traffic)"
            )
            raise Aborted(f"{phase.name}: {phase.note}")
    _production_unmoved(ctx, production)  # the rules compare with production: judged only if it still serves
    phase.rules, phase.judged = [rule for rule in rules(current) if rule is not None], True
    for rule in phase.rules:
        say(f"  {'pass' if rule.passed else 'FAIL'} {phase.name} {rule.rule}: {rule.detail}")
    failed = [rule.detail for rule in phase.rules if not rule.passed]
    if failed:
        raise Aborted(f"{phase.name}: " + "; ".join(failed))


def _score_psi(production: VersionWindow, version: VersionWindow) -> float | None:
    if not production.scores or not version.scores or len(production.scores) != len(version.scores):
        return None
    return psi(production.scores, version.scores)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _production_unmoved(ctx: Context, production: str) -> None:
    """Aborted when production no longer points where the rollout started (a rollback or promote meanwhile)."""
    now = registry.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
    if now != production:
        raise Aborted(f"production moved from {production} to {now or 'nothing'} during the rollout")


def _traffic(ctx: Context, traffic: Traffic, production: str, move_alias: bool = False) -> None:
    """Point the canary alias at the version (at the start) and set how replicas route, under the release lock."""
    alias = ctx.params.rollout.canary_alias
    with release_lock(ctx.client, ctx.model):
        _production_unmoved(ctx, production)
        if move_alias:
            before = registry.alias_version(ctx.client, ctx.model, alias)
            registry.move_alias(ctx.client, ctx.model, alias, traffic.version, f"rollout: {traffic.mode}", before,
                                kind="rollout", signing_key=ctx.signing_key)  # fmt: skip
        registry.set_traffic(ctx.client, ctx.model, traffic, ctx.signing_key)
    say(f"  traffic: {traffic.mode}" + (f" {traffic.weight} %" if traffic.mode == "canary" else ""))


def _end(ctx: Context, version: str, why: str) -> None:
    """The canary answers nothing again and its alias goes, recorded in the ledger with why."""
    alias = ctx.params.rollout.canary_alias
    with release_lock(ctx.client, ctx.model):
        registry.set_traffic(ctx.client, ctx.model, Traffic(), ctx.signing_key)
        if registry.alias_version(ctx.client, ctx.model, alias) == version:
            registry.move_alias(ctx.client, ctx.model, alias, None, f"rollout ended: {why}", version,
                                kind="rollout", signing_key=ctx.signing_key)  # fmt: skip


def _record(ctx: Context, mv: ModelVersion, report: RolloutReport) -> None:
    """The verdict on the version (signed when a key is set), then the local report and the job summary."""
    from api.release.verdicts import release_verdict

    tags = {contract.ROLLOUT: report.verdict, contract.ROLLOUT_DETAIL: report.reason[:5000]}
    if ctx.signing_key is not None:
        digest = mv.tags.get(contract.ARTIFACT_DIGEST, "")
        statement = release_verdict("rollout", mv.tags, model=ctx.model, version=str(mv.version),
                                    run_id=str(mv.run_id), digest=digest, verdict=report.verdict)  # fmt: skip
        tags[contract.ROLLOUT_SIGNATURE] = sign(ctx.signing_key, statement)
    for key, value in tags.items():
        ctx.client.set_model_version_tag(ctx.model, str(mv.version), key, value)
    _write(report)


def _write(report: RolloutReport) -> None:
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / f"{report.kind}.json").write_text(report.to_json())
    (REPORTS / f"{report.kind}.md").write_text(report.to_markdown())
    github.write_summary(report.to_markdown())


def watch_stage(params: Params, api_urls: Sequence[str]) -> str:
    """The bake: production's bake rules on live metrics for `rollout.bake.duration_s`; a failure rolls back."""
    ctx = Context.open(params)
    source = metrics_source(api_urls)
    bake = params.rollout.bake
    production = registry.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
    if production is None:
        raise ConfigError(f"@{ctx.registry.production_alias} points at nothing: there is nothing to watch")
    report = RolloutReport("watch", ctx.model, production, production, source.describe())
    phase = Phase("bake", "bake", 100)
    report.phases.append(phase)
    with stage("watch", f"version {production} for {bake.duration_s:g} s"):
        start, started = source.snapshot(), time.monotonic()
        while time.monotonic() - started < bake.duration_s:
            time.sleep(min(bake.poll_s, max(bake.duration_s - (time.monotonic() - started), 0.1)))
            phase.seconds = time.monotonic() - started
            current = registry.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
            if current != production:
                report.verdict, report.reason = "not judged", f"production moved to {current} during the bake"
                break
            judged = _bake_rules(window(start, source.snapshot()), production, params, phase)
            failed = [rule for rule in judged if not rule.passed]
            if failed:
                report.verdict = "rolled back"
                report.reason = "; ".join(f"{rule.rule}: {rule.detail}" for rule in failed)
                break
        else:
            report.verdict = "passed" if phase.rules else "not judged"
            report.reason = "" if phase.rules else f"fewer than {bake.min_requests} requests in the bake"
    _write(report)
    if report.verdict == "rolled back":
        to = rollback_stage(params, f"watch: {report.reason} on version {production}")
        raise CheckFailed(f"version {production} failed its bake ({report.reason}); production rolled back to {to}")
    return report.verdict


def _bake_rules(w: Snapshot, version: str, params: Params, phase: Phase) -> list[RuleResult]:
    """The bake rules on the window so far (none until it holds `min_requests`)."""
    bake, ours = params.rollout.bake, VersionWindow.of(w, version)
    phase.figures = {"requests": int(ours.requests), "p99 ms": _round(ours.p99_ms)}
    if ours.requests < bake.min_requests:
        return []
    drift = feature_psi(w, version)
    worst = max(drift.items(), key=lambda item: item[1], default=(None, None))
    rules = [
        ceiling("max_error_ratio", "error_ratio", bake.max_error_ratio, ours.error_ratio, "5xx per request"),
        ceiling("max_client_error_ratio", "client_error_ratio", bake.max_client_error_ratio, ours.client_error_ratio,
                "4xx per request"),
        ceiling("max_p99_ms", "p99_ms", bake.max_p99_ms, ours.p99_ms, "p99 latency (ms)"),
        ceiling("max_drift_psi", "drift_psi", bake.max_drift_psi, worst[1],
                f"largest feature PSI ({worst[0]})" if worst[0] else "largest feature PSI"),
    ]  # fmt: skip
    phase.rules, phase.judged = [rule for rule in rules if rule is not None], True
    return phase.rules
