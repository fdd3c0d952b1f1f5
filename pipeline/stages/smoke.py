"""smoke: a served version asked about its stored examples; the verdict recorded on it, bound to what it served."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from gates.smoke_checks import Check, SmokeReport
from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core.config import Params
from pipeline.core.errors import CheckFailed, ConfigError, InfrastructureError
from pipeline.runtime import container
from pipeline.runtime.api_process import uvicorn_process
from pipeline.runtime.processes import free_port, wait_for
from pipeline.runtime.smoke import smoke_http
from pipeline.stages.context import Context
from pipeline.store import model_versions, training_runs

if TYPE_CHECKING:
    from api.release.contract import SmokeExamples


def smoke_stage(
    params: Params, version: str | None = None, base_url: str | None = None, image: str | None = None
) -> SmokeReport:
    """Smoke-test a served version and record the verdict on it, bound to the artifact digest it served.

    Against `base_url` (a running API), `image` (a container of it started
    here, pinned to the version), or else a uvicorn process started here.
    """
    ctx = Context.open(params)
    version = version or ctx.candidate()
    mv = ctx.version(version)
    if mv.run_id is None:
        raise ConfigError(f"version {version} has no run: no stored smoke examples to ask it about")
    examples = training_runs.load_smoke_examples(ctx.client, mv.run_id)
    where = base_url or (f"a container of {image}" if image else "a local uvicorn process")
    with stage("smoke", f"version {version} served by {where}"):
        digest, refusal = ctx.release_refusal(mv, require_smoke=False)
        image_digest = None
        if refusal:
            report = SmokeReport(version, where, [Check("artifact", False, f"refused: {refusal}")])
        elif base_url:
            report = smoke_http(base_url, version, examples, params.smoke, base_url, digest)
        else:
            try:
                report, image_digest = _smoke_started_here(ctx, version, examples, image, digest)
            except InfrastructureError as exc:  # recorded as a failure, then exit 3: the engine broke, not the model
                failed = SmokeReport(version, where, [Check("start", False, f"infrastructure: {exc}")])
                model_versions.record_smoke(ctx.client, ctx.model, mv, False, where, failed.summary(), None, None,
                                      ctx.signing_key)  # fmt: skip
                raise
        model_versions.record_smoke(
            ctx.client, ctx.model, mv, report.passed, report.target, report.summary(), digest, image_digest,
            ctx.signing_key,
        )  # fmt: skip
        for check in report.checks:
            say(f"  {'pass' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    github.write_summary(report.to_markdown(), ctx.env.github)
    if not report.passed:
        raise CheckFailed(f"smoke failed for version {version}: {report.summary()}")
    return report


def _smoke_started_here(
    ctx: Context, version: str, examples: SmokeExamples, image: str | None, digest: str | None
) -> tuple[SmokeReport, str | None]:
    """Start the API serving exactly `version` (a container or uvicorn), smoke it, stop it.

    Returns the report and, for an image, the image's digest.
    """
    params = ctx.params
    env = {
        "MLFLOW_TRACKING_URI": ctx.tracking.uri,
        "MODEL_NAME": ctx.model,
        "MODEL_VERSION": version,
        "SMOKE_TEST_VERSION": version,  # the one replica that may serve a version before its smoke verdict
        # params.yaml's serving section configures the API that smoke tests, as a deployment would.
        "MAX_BATCH_SIZE": str(params.serving.max_batch_size),
        "RELOAD_INTERVAL_S": str(params.serving.reload_interval_s),
    }
    store = params.feature_store
    if store.service is not None:  # a version trained from a feature service is not ready without its online store
        from pipeline.store.feature_store import online_url

        env["FEATURE_STORE_URL"] = online_url(Path(store.repo).resolve(), ctx.env.feature_store_url)
        env["FEATURE_LOOKUP_TIMEOUT_MS"] = str(store.lookup_timeout_ms)
        if image and env["FEATURE_STORE_URL"].startswith("sqlite:"):
            raise ConfigError("smoke of an image reading a feature store needs FEATURE_STORE_URL=redis://... (the "
                              "container cannot open this machine's SQLite online store)")  # fmt: skip
    image_digest = None
    if image:
        container.require_http_tracking(ctx.tracking.uri)
        target = f"image {image}"
    else:
        target = f"python -m api (MODEL_VERSION={version})"
    try:
        if image:
            image_digest = container.image_digest(image)
            with container.running_container(image, env, free_port(), ctx.env.mlflow_auth) as url:
                wait_for(url + "/health", params.smoke.ready_timeout_s)
                report = smoke_http(url, version, examples, params.smoke, f"{target} ({image_digest})", digest)
                return report, image_digest
        with uvicorn_process(env, startup_timeout_s=params.smoke.ready_timeout_s) as url:
            return smoke_http(url, version, examples, params.smoke, f"{target} at {url}", digest), None
    except (CheckFailed, OSError, subprocess.SubprocessError) as exc:  # could not even start: a failure, loudly
        return SmokeReport(version, target, [Check("start", False, str(exc))]), image_digest
