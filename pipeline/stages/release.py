"""register, promote and rollback: the alias moves, each inside the release lock and recorded in the ledger."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion

from api.release import contract
from gates.release_policy import check_promotion, rollback_candidates
from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core.config import Params
from pipeline.core.environment import PipelineEnv
from pipeline.core.errors import CheckFailed, ConfigError
from pipeline.core.ledger import is_rollback
from pipeline.runtime import kubernetes
from pipeline.stages.context import Context
from pipeline.stages.deploy import deploy_version, plan_pin
from pipeline.store import alias_moves, model_versions
from pipeline.store.release_lock import release_lock


def register_stage(params: Params, run_id: str) -> str:
    """Register a gated run and point the candidate alias at it; returns the version."""
    ctx = Context.open(params)
    ctx.run(run_id)
    alias = ctx.registry.candidate_alias
    with stage("register", f"run {run_id} as {ctx.model}"):
        version, created = model_versions.register(ctx.client, ctx.model, run_id, ctx.signing_key, ctx.verify_key)
        with release_lock(ctx.client, ctx.model):
            before = alias_moves.alias_version(ctx.client, ctx.model, alias)
            _move(ctx, alias, version, before, "register", f"registered from run {run_id}")
        say(f"  version {version} {'registered' if created else 'was already registered'}; @{alias} -> {version}")
    github.write_outputs(ctx.env.github, version=version)
    github.write_summary(
        f"Registered `{ctx.model}` version **{version}** from run `{run_id}`; `@{alias}` → {version}.", ctx.env.github
    )
    return version


@dataclass
class ProductionMove:
    """An alias move of production being decided: where it stands, and where it goes (None: nowhere)."""

    ctx: Context
    before: str | None
    target: ModelVersion | None = None
    why: str = ""
    pin: kubernetes.OverlayPin | None = None  # the overlay pinned to the target's published image

    def to(self, mv: ModelVersion, kind: str, reason: str, summary: str | None = None) -> None:
        """Move production to `mv` (compare-and-set on where it stood), recording the published image.

        The overlay's pin is worked out first: a missing or malformed overlay
        stops the move (exit 2) while nothing has moved.
        """
        image = model_versions.published_image(mv)
        self.pin = plan_pin(self.ctx.params.deploy, image)
        self.target, self.why = mv, summary or reason
        _move(self.ctx, self.ctx.registry.production_alias, str(mv.version), self.before, kind, reason, image)
        say(
            f"  @{self.ctx.registry.production_alias}: {self.before or 'nothing'} -> {mv.version} "
            f"({mv.tags[contract.ARTIFACT_DIGEST]})"
        )


@contextlib.contextmanager
def production_move(params: Params, name: str, what: str, env: PipelineEnv | None = None) -> Iterator[ProductionMove]:
    """The opening and closing promote and rollback share.

    Opens the context, requires the model, holds the release lock while the
    block decides and moves; then writes the image output and the summary, and
    deploys the image smoke tested with the version production moved to
    (pipeline/stages/deploy.py; outside the lock: a rollout takes minutes, and
    the move is already recorded).
    """
    ctx = Context.open(params, env)
    model_versions.require_model(ctx.client, ctx.model)
    alias = ctx.registry.production_alias
    with stage(name, what), release_lock(ctx.client, ctx.model):
        move = ProductionMove(ctx, alias_moves.alias_version(ctx.client, ctx.model, alias))
        yield move
    if move.target is not None:
        image = model_versions.published_image(move.target)
        github.write_outputs(ctx.env.github, image=image)
        github.write_summary(_summary(ctx, alias, move.before, move.target, move.why), ctx.env.github)
        deploy_version(ctx, move.target, move.pin)


def promote_stage(params: Params, version: str) -> None:
    """Move production to `version` if and only if the compare-and-set and the release check hold."""
    with production_move(params, "promote", f"version {version} to @{params.registry.production_alias}") as move:
        ctx = move.ctx
        mv = ctx.version(version)
        candidate = alias_moves.alias_version(ctx.client, ctx.model, ctx.registry.candidate_alias)
        if not check_promotion(model_versions.version_state(mv), candidate, move.before, rolled_back_from(ctx)):
            say(f"  @{ctx.registry.production_alias} already points at {version}; nothing to do")
            return
        _, refusal = ctx.release_refusal(mv)
        if refusal:
            raise CheckFailed(f"version {version} refused: {refusal}; nothing moved")
        move.to(mv, "promote", _promotion_reason(mv), summary="promoted")


def rolled_back_from(ctx: Context) -> set[str]:
    """The versions production was rolled back away from, by the verified release ledger."""
    moves = alias_moves.history(ctx.client, ctx.model, ctx.verify_key)
    alias = ctx.registry.production_alias
    return {m["from"] for m in moves if m["alias"] == alias and is_rollback(m) and m["from"]}


def rollback_stage(params: Params, reason: str, to: str | None = None, if_serving: str | None = None) -> str:
    """Move production back to the previous good version, or to `to`; returns the version.

    Without `to`, back along the verified release ledger: the versions
    production served before, most recent first, never one it was rolled back
    away from. Versions the release check refuses (artifact changed, no longer
    loads, badly signed) are skipped (without `to`) and named, or refused (with `to`).
    With `if_serving`, only while production still serves that version (checked
    inside the release lock): otherwise it already moved, and nothing happens
    (exit 0), so an alert delivered twice never rolls back twice.
    """
    if not reason or not reason.strip():
        raise ConfigError("rollback needs a --reason saying why")
    if if_serving is not None and not if_serving.isdigit():
        raise ConfigError(f"--if-serving expects a version number, got {if_serving!r}")
    env = PipelineEnv.read()
    if env.github.actions and not env.tracking_uri:
        raise ConfigError(
            "no MLFLOW_TRACKING_URI secret or variable is set: a rollback needs the team's tracking server"
        )
    what = f"@{params.registry.production_alias} to {to or 'the previous good version'}"
    with production_move(params, "rollback", what, env) as move:
        ctx = move.ctx
        if if_serving is not None and move.before != if_serving:
            already = (
                f"@{ctx.registry.production_alias} serves {move.before or 'nothing'}, not {if_serving}: "
                "production already moved; nothing to do"
            )
            say(f"  {already}")
            github.write_summary(f"Rollback of `{ctx.model}` not needed ({reason.strip()}): {already}.", ctx.env.github)
            return move.before or ""
        by_version = {str(mv.version): mv for mv in model_versions.versions(ctx.client, ctx.model)}
        states = [model_versions.version_state(mv) for mv in by_version.values()]
        moves = alias_moves.history(ctx.client, ctx.model, ctx.verify_key)
        served = [(m["from"], m["to"], is_rollback(m)) for m in moves if m["alias"] == ctx.registry.production_alias]
        candidates = rollback_candidates(states, move.before, to, served)
        if candidates[0].version == move.before:
            say(f"  @{ctx.registry.production_alias} already points at {move.before}; nothing to do")
            return str(move.before)
        skipped: list[str] = []
        for candidate in candidates:
            _, refusal = ctx.release_refusal(by_version[candidate.version])
            if refusal is None and to is None:
                refusal = _live_quality_failed(ctx, by_version[candidate.version])
            if refusal is None:
                why = f"rollback: {reason.strip()}"
                summary = why + (f"; skipped {'; '.join(skipped)}" if skipped else "")
                move.to(by_version[candidate.version], "rollback", why, summary)
                return candidate.version
            skipped.append(f"version {candidate.version}: {refusal}")
            say(f"  skipping version {candidate.version}: {refusal}")
        raise CheckFailed("no version to roll back to: " + "; ".join(skipped) + "; nothing moved")


def _live_quality_failed(ctx: Context, mv: ModelVersion) -> str | None:
    """Why a rollback should not return to `mv` on its own: its live quality verdict failed (None: it did not).

    Only a verdict the verify key vouches for (any, without a key) counts; `rollback --to` may still choose it.
    """
    from api.release.verdicts import quality_verdict

    quality = quality_verdict(
        mv.tags, ctx.verify_key, model=ctx.model, version=str(mv.version), run_id=str(mv.run_id or "")
    )
    if quality is None or quality.verdict != "failed":
        return None
    return f"its live quality verdict failed ({quality.state}; `pipeline quality --version {mv.version}`)"


def _move(ctx: Context, alias: str, version: str, before: str | None, kind: str, reason: str, image: str = "") -> None:
    alias_moves.move_alias(
        ctx.client, ctx.model, alias, version, reason, expected=before, kind=kind, image=image,
        signing_key=ctx.signing_key,
    )  # fmt: skip


def _promotion_reason(mv: ModelVersion) -> str:
    allowed = mv.tags.get(contract.SCHEMA_BREAK_ALLOWED)
    reason = "promoted after gates and smoke passed"
    return f"{reason}; serving schema break allowed: {allowed}" if allowed else reason


def _summary(ctx: Context, alias: str, before: str | None, mv: ModelVersion, why: str) -> str:
    signed = "verdicts verified against the release key" if ctx.verify_key is not None else "unsigned"
    image = model_versions.published_image(mv)
    serves = f"image `{image}`" if image else "no published image"
    return (
        f"`{ctx.model}` `@{alias}`: {before or 'nothing'} → **{mv.version}** ({why}); "
        f"artifact `{mv.tags.get(contract.ARTIFACT_DIGEST)}`, {serves}, {signed}"
    )
