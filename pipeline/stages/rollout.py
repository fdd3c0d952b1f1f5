"""rollout and watch: a version reaches production through shadow and canary steps judged on live metrics, then bakes.

rollout points the canary alias at the version (a ledger entry naming a fresh
rollout id), has the replicas shadow it, then route a growing share of
customers to it, judging each phase's rules on that phase's window of live
metrics; it promotes through promote at the end. Each phase's traffic state
is signed with its binding to the rollout and an expiry (`state_lifetime_s`).
A failed rule (or a phase that never sees its traffic) aborts: the canary
answers nothing again, its alias is removed, the ledger records the end of
the rollout (replicas refuse its states from then on), the version says why,
and production never moved. watch judges the bake rules after a
promotion and rolls back through rollback when one fails.

With `rollout.quality` (`rollout.bake.quality`) set, the candidate's
(production's) signed live quality verdict (`python -m pipeline quality`) is
held to that rule: rollout refuses to promote a candidate whose verdict shows
an established drop below its gate figure (checked before it starts and again
before it promotes), watch rolls production back at the start of the bake.
No verdict, one that does not verify, or too few labelled rows: not judged.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from api.release import contract
from api.release.traffic import Rollout, Traffic
from api.release.verdicts import quality_verdict
from gates.live_decisions import Look, phase_outcome
from gates.live_rules import Snapshot, window
from gates.release_policy import check_promotion
from gates.rollout_report import Phase, RolloutReport
from gates.rules import RuleResult
from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core.config import Params
from pipeline.core.environment import GitHubEnv
from pipeline.core.errors import CheckFailed, ConfigError
from pipeline.core.quality_rules import RecordedCheck, judge_recorded
from pipeline.core.release_keys import sign
from pipeline.core.release_rules import BakeJudge, RolloutJudge
from pipeline.core.rollout_params import QualityRule, RolloutParams
from pipeline.runtime.live_metrics import MetricsSource, metrics_source
from pipeline.stages.context import Context
from pipeline.stages.release import promote_stage, rollback_stage, rolled_back_from
from pipeline.store import alias_moves, model_versions
from pipeline.store.release_lock import release_lock

REPORTS = Path("reports")
# Added to each state's lifetime: clock skew between this runner and the replicas, a slow metrics read or registry
# write at the end of a phase. A state outlives its phase by at most this, if nothing ends it first.
STATE_MARGIN_S = 120.0
UNSIGNED_STEPS = (
    "rollout.steps needs RELEASE_SIGNING_KEY (and replicas with RELEASE_VERIFY_KEY): without a key anyone with "
    "registry write access could write a canary weight, so replicas honour an unsigned state in shadow only. "
    "Set the keys, or --set rollout.steps=[] to judge the version in shadow alone"
)


class Aborted(Exception):
    """A phase's rule failed, or the phase never saw the traffic it needs: the rollout stops."""


def rollout_stage(params: Params, version: str, api_urls: Sequence[str]) -> str:
    """Shadow, then each canary step, then promote; returns the version. CheckFailed (exit 1) when it aborts."""
    ctx = Context.open(params)
    source = metrics_source(api_urls, ctx.env.prometheus_vars())
    model_versions.require_model(ctx.client, ctx.model)
    mv = ctx.version(version)
    production = alias_moves.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
    candidate = alias_moves.alias_version(ctx.client, ctx.model, ctx.registry.candidate_alias)
    if not check_promotion(model_versions.version_state(mv), candidate, production, rolled_back_from(ctx)):
        say(f"  @{ctx.registry.production_alias} already points at {version}; nothing to roll out")
        return version
    _, refusal = ctx.release_refusal(mv)
    if refusal:
        raise CheckFailed(f"version {version} refused: {refusal}; nothing rolled out")
    if params.rollout.quality is not None:
        check = quality_check(ctx, version, params.rollout.quality)
        say(f"  live quality of {version}: {check.outcome}: {check.detail}")
        if check.failed:
            raise CheckFailed(f"version {version} refused: its live quality failed rollout.quality ({check.detail}); "
                              "nothing rolled out")  # fmt: skip
    if production is None:  # nothing serves yet: nothing to shadow or split traffic with
        say("  production points at nothing: no live traffic to judge the version on; promoting it")
        promote_stage(params, version)
        return version
    if ctx.signing_key is None and params.rollout.steps:
        raise ConfigError(UNSIGNED_STEPS)
    report = RolloutReport("rollout", ctx.model, version, production, source.describe())
    plan = ", ".join(["shadow", *(f"{s.weight} %" for s in params.rollout.steps)])
    with stage("rollout", f"version {version} against production {production}: {plan}"):
        try:
            _run(ctx, source, report, version, production)
            if params.rollout.quality is not None:  # a quality verdict recorded during the rollout counts too
                check = quality_check(ctx, version, params.rollout.quality)
                if check.failed:
                    raise Aborted(f"live quality failed rollout.quality: {check.detail}")
            promote_stage(params, version)
            report.verdict = "passed"
        except (Aborted, CheckFailed) as exc:
            report.verdict, report.reason = "aborted", str(exc)
        except BaseException as exc:  # interrupted, or the metrics or the registry failed: abort, then say so
            report.verdict, report.reason = "aborted", f"stopped: {exc}"
            raise
        finally:  # interrupted or not: the canary answers nothing again, its alias goes, the ledger says it ended
            _end(ctx, version, report.rollout, report.reason or f"rollout {report.verdict}")
            _record(ctx, mv, report)
    if report.verdict != "passed":
        now = alias_moves.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
        where = f"production is still {production}" if now == production else f"production is {now or 'nothing'}"
        raise CheckFailed(f"rollout of version {version} aborted: {report.reason}; {where}, the rollout moved nothing")
    return version


def quality_check(ctx: Context, version: str, rule: QualityRule) -> RecordedCheck:
    """`rule` held to the version's quality verdict: only one that verifies counts when a verify key is set."""
    mv = ctx.version(version)
    found = quality_verdict(mv.tags, ctx.verify_key, model=ctx.model, version=version, run_id=str(mv.run_id))
    if found is None and contract.QUALITY in mv.tags:
        return RecordedCheck("inconclusive", "its quality verdict does not verify against the release key: ignored")
    if found is None:
        return judge_recorded(None, None, rule)
    return judge_recorded(found.verdict, found.figures, rule)


def state_lifetime_s(settings: RolloutParams) -> float:
    """How long a phase's traffic state stays valid: the longest a phase lasts, a poll either side, and a margin.

    A phase ends (passed, or aborted on its timeout) by `rollout.phase_timeout_s`
    plus a poll; each phase writes a state of its own, so a state copied during
    one step is refused this long after it was written at most.
    """
    return settings.phase_timeout_s + 2 * settings.poll_s + STATE_MARGIN_S


def _run(ctx: Context, source: MetricsSource, report: RolloutReport, version: str, production: str) -> None:
    settings = ctx.params.rollout
    judge = RolloutJudge(settings, version, production)
    salt = secrets.token_hex(16)  # the split's key for this rollout: no client can aim at a side
    shadow = Traffic("shadow", version, 0, settings.shadow.sample_share, salt=salt)
    rollout = _traffic(ctx, shadow, production, start=True)
    report.rollout = rollout.id
    phase = Phase("shadow", "shadow", 0)
    report.phases.append(phase)
    _phase(ctx, source, phase, settings.shadow.min_duration_s, judge.shadow, production)
    for i, step in enumerate(settings.steps):
        _traffic(ctx, Traffic("canary", version, step.weight, 0.0, salt=salt, rollout=rollout), production)
        phase = Phase(f"canary {step.weight} %", "canary", step.weight)
        report.phases.append(phase)
        last = i == len(settings.steps) - 1

        def step_looks(w: Snapshot, phase: Phase, last: bool = last) -> list[Look]:
            return judge.step(w, phase, planned=last)

        _phase(ctx, source, phase, step.min_duration_s, step_looks, production)


def _phase(
    ctx: Context,
    source: MetricsSource,
    phase: Phase,
    min_duration_s: float,
    looks: Callable[[Snapshot, Phase], list[Look]],
    production: str,
) -> None:
    """Look at the phase's window every poll: abort as soon as a rule's evidence crosses, pass once every plan is in.

    Each rule is anytime-valid, so looking at every poll costs no false alarms
    beyond its share of α. Aborted when a rule fails, or when the phase has not
    seen its planned traffic by `rollout.phase_timeout_s`.
    """
    settings = ctx.params.rollout
    say(f"  {phase.name}: at least {min_duration_s:g} s, until every rule's plan is in")
    start, started = source.snapshot(), time.monotonic()
    while True:
        time.sleep(settings.poll_s)
        current, elapsed = window(start, source.snapshot()), time.monotonic() - started
        phase.seconds = elapsed
        judged = looks(current, phase)
        if phase_outcome(judged, elapsed, min_duration_s) is not None:
            break
        if elapsed > settings.phase_timeout_s:
            short = [f"{look.result.rule} {look.seen:.0f} of {look.planned:.0f}" for look in judged
                     if not look.complete]  # fmt: skip
            phase.note = (
                f"the phase did not see its planned traffic in {settings.phase_timeout_s:g} s ({', '.join(short)}): "
                "the new version or its traffic state was refused by the replicas (their /model says why), or traffic "
                "is too thin for the effects asked"
            )
            phase.rules = [look.result for look in judged]
            raise Aborted(f"{phase.name}: {phase.note}")
    _production_unmoved(ctx, production)  # the rules compare with production: judged only if it still serves
    phase.rules, phase.judged = [look.result for look in judged], True
    for rule in phase.rules:
        say(f"  {'pass' if rule.passed else 'FAIL'} {phase.name} {rule.rule}: {rule.detail}")
    failed = [look.result.detail for look in judged if look.failed]
    if failed:
        raise Aborted(f"{phase.name}: " + "; ".join(failed))


def _production_unmoved(ctx: Context, production: str) -> None:
    """Aborted when production no longer points where the rollout started (a rollback or promote meanwhile)."""
    now = alias_moves.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
    if now != production:
        raise Aborted(f"production moved from {production} to {now or 'nothing'} during the rollout")


def _traffic(ctx: Context, traffic: Traffic, production: str, start: bool = False) -> Rollout:
    """Set how replicas route, under the release lock; at the start, point the canary alias and begin the rollout.

    Each state is signed with its rollout's binding and an expiry `state_lifetime_s` from now.
    """
    alias = ctx.params.rollout.canary_alias
    with release_lock(ctx.client, ctx.model):
        _production_unmoved(ctx, production)
        expires = datetime.now(UTC) + timedelta(seconds=state_lifetime_s(ctx.params.rollout))
        rollout = traffic.rollout
        if start:
            assert traffic.version is not None
            why = f"rollout: {traffic.mode}"
            rollout = alias_moves.start_rollout(ctx.client, ctx.model, alias, traffic.version, why, ctx.signing_key)
        assert rollout is not None
        state = replace(traffic, rollout=rollout, expires=expires.isoformat(timespec="seconds"))
        alias_moves.set_traffic(ctx.client, ctx.model, state, ctx.signing_key)
    say(f"  traffic: {traffic.mode}" + (f" {traffic.weight} %" if traffic.mode == "canary" else "") +
        f" (rollout {rollout.id}, state valid until {state.expires})")  # fmt: skip
    return rollout


def _end(ctx: Context, version: str, rollout: str, why: str) -> None:
    """The canary answers nothing again, its alias goes, and the ledger records the rollout's end with why."""
    alias = ctx.params.rollout.canary_alias
    with release_lock(ctx.client, ctx.model):
        alias_moves.end_rollout(ctx.client, ctx.model, alias, version, rollout or None, f"rollout ended: {why}",
                             ctx.signing_key)  # fmt: skip


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
    _write(report, ctx.env.github)


def _write(report: RolloutReport, github_env: GitHubEnv) -> None:
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / f"{report.kind}.json").write_text(report.to_json())
    (REPORTS / f"{report.kind}.md").write_text(report.to_markdown())
    github.write_summary(report.to_markdown(), github_env)


def watch_stage(params: Params, api_urls: Sequence[str]) -> str:
    """The bake: production's own 5xx and slowness on live metrics for `rollout.bake.duration_s`; a failure rolls back.

    Each rule looks at every poll and is anytime-valid: a healthy production is
    rolled back by one bake with probability at most `rollout.alpha`.
    """
    ctx = Context.open(params)
    bake = params.rollout.bake
    if bake.quality is None:
        source = metrics_source(api_urls, ctx.env.prometheus_vars())
    production = alias_moves.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
    if production is None:
        raise ConfigError(f"@{ctx.registry.production_alias} points at nothing: there is nothing to watch")
    if bake.quality is not None:  # judged first: a failed verdict rolls back without waiting for live metrics
        _watch_quality(ctx, production, bake.quality)
        source = metrics_source(api_urls, ctx.env.prometheus_vars())
    judge = BakeJudge(params.rollout, production)
    report = RolloutReport("watch", ctx.model, production, production, source.describe())
    phase = Phase("bake", "bake", 100)
    report.phases.append(phase)
    looks: list[Look] = []
    with stage("watch", f"version {production} for {bake.duration_s:g} s"):
        start, started = source.snapshot(), time.monotonic()
        while time.monotonic() - started < bake.duration_s:
            time.sleep(min(bake.poll_s, max(bake.duration_s - (time.monotonic() - started), 0.1)))
            phase.seconds = time.monotonic() - started
            current = alias_moves.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
            if current != production:
                report.verdict, report.reason = "not judged", f"production moved to {current} during the bake"
                break
            looks = judge.looks(window(start, source.snapshot()), phase)
            phase.rules, phase.judged = [look.result for look in looks], True
            failed = [look.result for look in looks if look.failed]
            if failed:
                report.verdict = "rolled back"
                report.reason = "; ".join(f"{rule.rule}: {rule.detail}" for rule in failed)
                break
        else:
            short = [f"{look.result.rule} {look.seen:.0f} of {look.planned:.0f}" for look in looks if not look.complete]
            report.verdict = "passed" if looks and not short else "not judged"
            report.reason = "" if report.verdict == "passed" else (
                "fewer counted requests than the rules plan (" + (", ".join(short) or "none") + "): "
                "production stays, unjudged"
            )  # fmt: skip
    _write(report, ctx.env.github)
    if report.verdict == "rolled back":
        to = rollback_stage(params, f"watch: {report.reason} on version {production}")
        raise CheckFailed(f"version {production} failed its bake ({report.reason}); production rolled back to {to}")
    return report.verdict


def _watch_quality(ctx: Context, production: str, rule: QualityRule) -> None:
    """Production's quality verdict against `rollout.bake.quality`: a failure rolls back (CheckFailed, exit 1)."""
    check = quality_check(ctx, production, rule)
    say(f"  live quality of {production}: {check.outcome}: {check.detail}")
    if not check.failed:
        return
    report = RolloutReport("watch", ctx.model, production, production, "the version's signed quality verdict")
    phase = Phase("quality", "bake", 100, judged=True)
    phase.rules = [RuleResult("quality", "live_quality", -rule.max_drop, None, False, check.detail)]
    report.phases.append(phase)
    report.verdict, report.reason = "rolled back", f"quality: {check.detail}"
    _write(report, ctx.env.github)
    to = rollback_stage(ctx.params, f"watch: live quality: {check.detail} on version {production}")
    raise CheckFailed(f"version {production} failed rollout.bake.quality ({check.detail}); production rolled back "
                      f"to {to}")  # fmt: skip
