"""The stages of the gated flow, each one command of the CLI.

Each stage reads params, talks to MLflow through the adapters and returns a
plain value; a check that says no raises CheckFailed after recording why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.safe_model import RefusedModel
from api.release.verdicts import Verdict, image_refusal, sign
from gates.bootstrap import METRICS
from gates.evaluate import evaluate as evaluate_gates
from gates.model_card import CardFacts, model_card
from gates.policy_diff import policy_changes
from gates.profile import compare_profiles
from gates.release_policy import check_promotion, rollback_candidates
from gates.report import COMMENT_MARKER, GateReport
from gates.schema_diff import compare_schemas
from gates.smoke_checks import Check, SmokeReport
from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.ci.provenance import git_sha
from pipeline.core import release_keys
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import Params
from pipeline.core.data import coerce_to_schema, load_dataset
from pipeline.core.errors import CheckFailed, ConfigError, InfrastructureError
from pipeline.core.ledger import is_rollback
from pipeline.core.train import train
from pipeline.runtime import container
from pipeline.runtime.api_process import uvicorn_process
from pipeline.runtime.processes import free_port, wait_for
from pipeline.runtime.smoke import smoke_http
from pipeline.runtime.tracking_server import start_tracking_server
from pipeline.store import connection, gate_inputs, registry, tracking
from pipeline.store.integrity import inspect_version
from pipeline.store.release_lock import release_lock

# PR checks log to an ephemeral store and read production from the team's server here.
PRODUCTION_URI_VAR = "PRODUCTION_TRACKING_URI"

REPORTS = Path("reports")


def make_data(params: Params, force: bool = False) -> Path:
    """Write the generated churn data set to `data.path`, unless a file is already there."""
    path = Path(params.data.path)
    if path.exists() and not force:
        say(f"✓ data: {path} exists; left as is (--force regenerates)")
        return path
    with stage("data", f"generating {params.data.rows} churn-shaped rows (seed {params.data.seed}) into {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        generate_churn(params.data.rows, params.data.seed).to_csv(path, index=False)
    return path


def train_stage(params: Params) -> str:
    """Fit, score and log a run; returns the run id."""
    client = connection.connect(params)  # fail fast, before any work, if the tracking server is down
    with stage("train", f"{params.model.type} on {params.data.path}"):
        data = load_dataset(params.data)
        for note in data.notes:
            say(f"  note: {note}")
        result = train(data, params.model, params.data.test_size, params.data.seed)
        say(
            f"  {data.rows} rows, {len(data.schema)} features; "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        )
        run_id = tracking.log_training_run(client, params, data, result)
        say(f"  logged run {run_id}")
    github.write_outputs(run_id=run_id)
    return run_id


def gate_stage(params: Params, run_id: str, base_params: Params | None = None) -> GateReport:
    """Evaluate the gates for a run, record the verdict on the run, then write the local report.

    The registry has the verdict before any local file says anything: a stale
    reports/gate.json is removed first, and written only after the run's tags.
    """
    for stale in (REPORTS / "gate.json", REPORTS / "gate.md", REPORTS / "model_card.md"):
        stale.unlink(missing_ok=True)
    client = connection.connect(params)
    signing_key, verify_key = release_keys.signing_key(), release_keys.verify_key()
    run = _get_run(client, run_id)
    name, gates = params.registry.model_name, params.gates
    rules_text = ", ".join(
        f"{m} >= {g.min}" if g.max_drop is None else f"{m} >= {g.min}, {m} drop <= {g.max_drop} vs production"
        for m, g in gates.metrics.items()
    )
    with stage("gate", rules_text), tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        try:
            candidate = gate_inputs.candidate(client, run, Path(tmp) / "candidate")
        except (RefusedModel, KeyError) as exc:
            raise CheckFailed(f"run {run_id} has no loadable logged model: {exc}") from None
        _check_gate_config(gates, run, candidate)
        raw = tracking.load_raw_test_set(client, run_id)
        positive = candidate.positive_label
        y_true = (raw[tracking.TARGET_COLUMN].astype(str) == positive).to_numpy()
        try:
            candidate_scored = gate_inputs.score(candidate, raw, positive)
        except gate_inputs.CannotScore as exc:
            raise CheckFailed(f"run {run_id}: {exc}") from None

        production_client = _production_client(params, client)
        version = registry.alias_version(production_client, name, params.registry.production_alias)
        baseline = version  # where production stood: promote's compare-and-set checks it has not moved
        production, schema, drift, notes = None, None, None, []
        if version is not None:
            try:
                model, error = gate_inputs.production(
                    production_client, name, version, Path(tmp) / "production", verify_key
                )
            except gate_inputs.ProductionRefused as exc:
                say(f"  {exc}")
                if verify_key is not None:  # signed releases: a production the release check refuses fails the gate
                    model, error = None, str(exc)
                else:  # unsigned: nothing vouches for production, so it is reported and not compared against
                    model, error, version = None, None, None
                    notes.append(f"{exc}; not compared against (unsigned mode)")
        if version is not None:
            production, note = gate_inputs.production_answers(
                version, model, error, raw, positive, gates.allow_breaking_schema
            )
            notes += [note] if note else []
            if model is not None:
                schema = compare_schemas(model.inputs, candidate.inputs)
                if model.profile and candidate.profile:
                    drift = compare_profiles(model.profile, candidate.profile)
                else:
                    notes.append(f"no data profile on {'the candidate' if model.profile else f'production v{version}'}")

        started = time.perf_counter()
        frame = coerce_to_schema(raw, candidate.features)
        result = evaluate_gates(
            gates, params.data.seed, y_true, frame, candidate_scored, candidate.logged, production, schema, drift
        )
        say(f"  bootstrap: {gates.bootstrap_samples} paired resamples scored in {time.perf_counter() - started:.2f} s")
        sha = run.data.tags.get(contract.GIT_SHA, git_sha())
        changes = None if base_params is None else policy_changes(base_params.gates.model_dump(), gates.model_dump())
        report = GateReport(
            model_name=name,
            run_id=run_id,
            git_sha=sha,
            result=result,
            confidence=gates.confidence,
            bootstrap_samples=gates.bootstrap_samples,
            policy_changes=changes,
            notes=[*notes, f"Model artifact {candidate.digest}; verdict {'signed' if signing_key else 'unsigned'}."],
        )
        card = model_card(report, _card_facts(params, run, candidate))
        client.log_text(run_id, report.to_json(), contract.GATE_REPORT)
        client.log_text(run_id, report.to_markdown(), "gate/gate.md")
        client.log_text(run_id, card, contract.MODEL_CARD)
        client.set_tag(run_id, contract.GATE_BASELINE, baseline or "")
        if schema is not None and schema.breaking:
            client.set_tag(run_id, contract.SCHEMA_BREAK_ALLOWED, "; ".join(schema.breaking)[:5000])
        if signing_key is not None:
            verdict = Verdict("gate", name, "", run_id, candidate.digest, report.verdict, sha, baseline=baseline or "")
            client.set_tag(run_id, contract.GATE_SIGNATURE, sign(signing_key, verdict))
        client.set_tag(run_id, contract.GATE, report.verdict)
        REPORTS.mkdir(exist_ok=True)
        (REPORTS / "gate.json").write_text(report.to_json())
        (REPORTS / "gate.md").write_text(report.to_markdown())
        (REPORTS / "model_card.md").write_text(card)
        for change in changes or []:
            say(f"  policy {change.direction}: {change.message}")
        for rule in result.rules:
            say(f"  {'pass' if rule.passed else 'FAIL'} {rule.rule}: {rule.detail}")
    github.write_outputs(gate=report.verdict)
    github.write_summary(
        report.to_markdown()
        + f"\n<details><summary>Model card (<code>{contract.MODEL_CARD}</code> on run {run_id})</summary>\n\n"
        + card
        + "\n</details>\n"
    )
    if not report.passed:
        raise CheckFailed(f"gate failed for run {run_id}; report in {REPORTS / 'gate.md'} and on the run")
    return report


def _check_gate_config(gates, run, candidate: gate_inputs.ModelUnderGate) -> None:
    """Gated metrics must be computable or logged, slice columns must be features: exit 2 otherwise."""
    for metric in gates.metrics:
        if metric not in METRICS and metric not in run.data.metrics:
            known = sorted(set(METRICS) | set(run.data.metrics))
            raise ConfigError(f"gates.metrics.{metric}: run {run.info.run_id} has no such metric (it has {known})")
    columns = [f.name for f in candidate.features]
    for column in gates.slices.columns:
        if column not in columns:
            raise ConfigError(f"gates.slices.columns: {column!r} is not a feature of the model (features: {columns})")


def _card_facts(params: Params, run, candidate: gate_inputs.ModelUnderGate) -> CardFacts:
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


def _promotion_reason(mv) -> str:
    allowed = mv.tags.get(contract.SCHEMA_BREAK_ALLOWED)
    reason = "promoted after gates and smoke passed"
    return f"{reason}; serving schema break allowed: {allowed}" if allowed else reason


def _production_client(params: Params, client: MlflowClient) -> MlflowClient:
    """The registry production is read from: PRODUCTION_TRACKING_URI when set (PR checks), else the same."""
    uri = os.environ.get(PRODUCTION_URI_VAR)
    return connection.client_for(uri) if uri else client


def register_stage(params: Params, run_id: str) -> str:
    """Register a gated run and point the candidate alias at it; returns the version."""
    client = connection.connect(params)
    _get_run(client, run_id)
    reg = params.registry
    with stage("register", f"run {run_id} as {reg.model_name}"):
        version, created = registry.register(
            client, reg.model_name, run_id, release_keys.signing_key(), release_keys.verify_key()
        )
        with release_lock(client, reg.model_name):
            before = registry.alias_version(client, reg.model_name, reg.candidate_alias)
            registry.move_alias(
                client,
                reg.model_name,
                reg.candidate_alias,
                version,
                f"registered from run {run_id}",
                expected=before,
                kind="register",
                signing_key=release_keys.signing_key(),
            )
        say(
            f"  version {version} {'registered' if created else 'was already registered'}; "
            f"@{params.registry.candidate_alias} -> {version}"
        )
    github.write_outputs(version=version)
    github.write_summary(
        f"Registered `{params.registry.model_name}` version **{version}** from run `{run_id}`; "
        f"`@{params.registry.candidate_alias}` → {version}."
    )
    return version


def smoke_stage(
    params: Params, version: str | None = None, base_url: str | None = None, image: str | None = None
) -> SmokeReport:
    """Smoke-test a served version and record the verdict on it, bound to the artifact digest it served.

    Against `base_url` (a running API), `image` (a container of it started
    here, pinned to the version), or else a uvicorn process started here.
    """
    client = connection.connect(params)
    signing_key = release_keys.signing_key()
    name = params.registry.model_name
    version = version or _candidate(client, params)
    mv = registry.get_version(client, name, version)
    examples = tracking.load_smoke_examples(client, mv.run_id)
    where = base_url or (f"a container of {image}" if image else "a local uvicorn process")
    with stage("smoke", f"version {version} served by {where}"):
        inspection = inspect_version(client, name, mv, release_keys.verify_key(), require_smoke=False)
        image_digest = None
        if not inspection.ok:
            report = SmokeReport(version, where, [Check("artifact", False, f"refused: {inspection.refusal}")])
        elif base_url:
            report = smoke_http(base_url, version, examples, params.smoke, base_url, inspection.digest)
        else:
            try:
                report, image_digest = _smoke_started_here(params, name, version, examples, image, inspection.digest)
            except InfrastructureError as exc:  # recorded as a failure, then exit 3: the engine broke, not the model
                failed = SmokeReport(version, where, [Check("start", False, f"infrastructure: {exc}")])
                registry.record_smoke(client, name, mv, False, where, failed.summary(), None, None, signing_key)
                raise
        registry.record_smoke(
            client, name, mv, report.passed, report.target, report.summary(), inspection.digest, image_digest,
            signing_key,
        )  # fmt: skip
        for check in report.checks:
            say(f"  {'pass' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    github.write_summary(report.to_markdown())
    if not report.passed:
        raise CheckFailed(f"smoke failed for version {version}: {report.summary()}")
    return report


def _smoke_started_here(
    params: Params, name: str, version: str, examples: dict, image: str | None, digest: str | None
) -> tuple[SmokeReport, str | None]:
    """Start the API serving exactly `version` (a container or uvicorn), smoke it, stop it.

    Returns the report and, for an image, the image's digest.
    """
    uri = connection.tracking_uri(params)
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "MODEL_NAME": name,
        "MODEL_VERSION": version,
        "SMOKE_TEST_VERSION": version,  # the one replica that may serve a version before its smoke verdict
        # params.yaml's serving section configures the API that smoke tests, as a deployment would.
        "MAX_BATCH_SIZE": str(params.serving.max_batch_size),
        "RELOAD_INTERVAL_S": str(params.serving.reload_interval_s),
    }
    image_digest = None
    if image:
        container.require_http_tracking(uri)
        target = f"image {image}"
    else:
        target = f"python -m api (MODEL_VERSION={version})"
    try:
        if image:
            image_digest = container.image_digest(image)
            port = free_port()
            with container.running_container(image, env, port) as url:
                wait_for(url + "/health", params.smoke.ready_timeout_s)
                return smoke_http(
                    url, version, examples, params.smoke, f"{target} ({image_digest})", digest
                ), image_digest
        with uvicorn_process(env, startup_timeout_s=params.smoke.ready_timeout_s) as url:
            return smoke_http(url, version, examples, params.smoke, f"{target} at {url}", digest), None
    except (CheckFailed, OSError, subprocess.SubprocessError) as exc:  # could not even start: a failure, loudly
        return SmokeReport(version, target, [Check("start", False, str(exc))]), image_digest


def image_stage(tag: str | None, base_image: str | None) -> str:
    """Build the API image; returns its tag."""
    sha = git_sha()
    tag = tag or f"churn-api:{sha[:12] if sha != 'unknown' else 'dev'}"
    with stage("image", f"building {tag}"):
        container.build_image(tag, sha, base_image)
    github.write_outputs(image=tag)
    github.write_summary(f"Built API image `{tag}` at commit `{sha[:12]}`.")
    return tag


def publish_stage(params: Params, version: str, image: str, repository: str | None) -> str:
    """Push the image smoke tested for `version`, tagged with the git sha; record REF and DIGEST on the version.

    Only the image whose ID smoke recorded is pushed, and only for a version
    that may be released (gate and smoke passed, artifact unchanged, verdicts
    signed when a key is set). Returns REF@DIGEST.
    """
    from pipeline.runtime.image_publish import image_repository, push

    repository = image_repository(repository, dict(os.environ))
    sha = git_sha()
    if sha == "unknown":
        raise ConfigError("publish tags the image with the git sha, and there is none (no GITHUB_SHA, no git HEAD)")
    client = connection.connect(params)
    name = params.registry.model_name
    mv = registry.get_version(client, name, version)
    ref = f"{repository}:{sha}"
    with stage("publish", f"version {version}'s smoke-tested image {image} as {ref}"):
        inspection = inspect_version(client, name, mv, release_keys.verify_key())
        if not inspection.ok:
            raise CheckFailed(f"version {version} may not be released ({inspection.refusal}); nothing published")
        smoked = mv.tags.get(contract.SMOKE_IMAGE_DIGEST)
        if not smoked:
            raise CheckFailed(
                f"version {version} was not smoke-tested as an image (`smoke --image`); nothing published"
            )
        local = container.image_digest(image)
        if local != smoked:
            raise CheckFailed(
                f"image {image} ({local[:19]}…) is not the image smoke tested for version {version} "
                f"({smoked[:19]}…); nothing published"
            )
        digest = push(container.find_engine(), image, ref, dict(os.environ))
        registry.record_image(client, name, mv, ref, digest, release_keys.signing_key())
        say(f"  pushed {ref}\n  digest {digest}")
    published = f"{ref}@{digest}"
    github.write_outputs(image_ref=ref, image_digest=digest)
    github.write_summary(f"Published version **{version}**'s smoke-tested image: `{published}`.")
    return published


def promote_stage(params: Params, version: str) -> None:
    """Move production to `version` if and only if the compare-and-set and the artifact checks hold."""
    client = connection.connect(params)
    verify_key = release_keys.verify_key()
    reg = params.registry
    registry.require_model(client, reg.model_name)
    with stage("promote", f"version {version} to @{reg.production_alias}"), release_lock(client, reg.model_name):
        mv = registry.get_version(client, reg.model_name, version)
        pointers = registry.aliases(client, reg.model_name)
        candidate, production = pointers.get(reg.candidate_alias), pointers.get(reg.production_alias)
        if not check_promotion(registry.version_state(mv), candidate, production):
            say(f"  @{reg.production_alias} already points at {version}; nothing to do")
            return
        refusal = _release_refusal(client, reg.model_name, mv, verify_key)
        if refusal:
            raise CheckFailed(f"version {version} refused: {refusal}; nothing moved")
        image = registry.published_image(mv)
        registry.move_alias(
            client,
            reg.model_name,
            reg.production_alias,
            version,
            reason=_promotion_reason(mv),
            expected=production,
            kind="promote",
            image=image,
            signing_key=release_keys.signing_key(),
        )
        say(f"  @{reg.production_alias}: {production or 'nothing'} -> {version} ({mv.tags[contract.ARTIFACT_DIGEST]})")
    github.write_outputs(image=image)
    github.write_summary(_alias_summary(reg.model_name, reg.production_alias, production, mv, "promoted", verify_key))


def _release_refusal(client: MlflowClient, name: str, mv, verify_key) -> str | None:
    """Why `mv` may not serve production: its artifact and verdicts as now, and its published image's record."""
    inspection = inspect_version(client, name, mv, verify_key)
    if not inspection.ok:
        return inspection.refusal
    return image_refusal(mv.tags, verify_key, model=name, version=str(mv.version), run_id=mv.run_id)


def rollback_stage(params: Params, reason: str, to: str | None = None) -> str:
    """Move production back to the previous good version, or to `to`; returns the version.

    Without `to`, back along the verified release ledger: the versions
    production served before, most recent first, never one it was rolled back
    away from. Versions whose artifact changed, no longer loads or is badly
    signed are skipped (without `to`) and named, or refused (with `to`).
    """
    if not reason or not reason.strip():
        raise ConfigError("rollback needs a --reason saying why")
    if os.environ.get("GITHUB_ACTIONS") == "true" and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(
            "no MLFLOW_TRACKING_URI secret or variable is set: a rollback needs the team's tracking server"
        )
    client = connection.connect(params)
    verify_key = release_keys.verify_key()
    reg = params.registry
    registry.require_model(client, reg.model_name)
    with (
        stage("rollback", f"@{reg.production_alias} to {to or 'the previous good version'}"),
        release_lock(client, reg.model_name),
    ):
        production = registry.alias_version(client, reg.model_name, reg.production_alias)
        by_version = {str(mv.version): mv for mv in registry.versions(client, reg.model_name)}
        states = [registry.version_state(mv) for mv in by_version.values()]
        moves = registry.history(client, reg.model_name, verify_key)
        served = [(m["from"], m["to"], is_rollback(m)) for m in moves if m["alias"] == reg.production_alias]
        candidates = rollback_candidates(states, production, to, served)
        if candidates[0].version == production:
            say(f"  @{reg.production_alias} already points at {production}; nothing to do")
            return production
        target, skipped = None, []
        for candidate in candidates:
            refusal = _release_refusal(client, reg.model_name, by_version[candidate.version], verify_key)
            if refusal is None:
                target = by_version[candidate.version]
                break
            skipped.append(f"version {candidate.version}: {refusal}")
            say(f"  skipping version {candidate.version}: {refusal}")
        if target is None:
            raise CheckFailed("no version to roll back to: " + "; ".join(skipped) + "; nothing moved")
        image = registry.published_image(target)
        registry.move_alias(
            client,
            reg.model_name,
            reg.production_alias,
            str(target.version),
            reason=f"rollback: {reason.strip()}",
            expected=production,
            kind="rollback",
            image=image,
            signing_key=release_keys.signing_key(),
        )
        say(f"  @{reg.production_alias}: {production} -> {target.version} ({target.tags[contract.ARTIFACT_DIGEST]})")
    why = f"rollback: {reason.strip()}" + (f"; skipped {'; '.join(skipped)}" if skipped else "")
    github.write_outputs(image=image)
    github.write_summary(_alias_summary(reg.model_name, reg.production_alias, production, target, why, verify_key))
    return str(target.version)


def _alias_summary(model: str, alias: str, before: str | None, mv, why: str, verify_key) -> str:
    signed = "verdicts verified against the release key" if verify_key is not None else "unsigned"
    image = registry.published_image(mv)
    serves = f"image `{image}`" if image else "no published image"
    return (
        f"`{model}` `@{alias}`: {before or 'nothing'} → **{mv.version}** ({why}); "
        f"artifact `{mv.tags.get(contract.ARTIFACT_DIGEST)}`, {serves}, {signed}"
    )


def tracking_server_stage(params: Params, directory: str, stop: bool = False, ephemeral: bool = False) -> str:
    """The tracking URI later steps should use: the configured one, else (or with --ephemeral) a local server."""
    pid_file = Path(directory) / "server.pid"
    if stop:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            pid_file.unlink()
            return "stopped"
        return "no ephemeral server running"
    configured = None if ephemeral else os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        connection.connect(params)  # fails fast, naming the server, if it is down
        github.write_outputs(ephemeral="false")
        github.export_env("MLFLOW_TRACKING_URI", configured)
        return configured
    why = "--ephemeral" if ephemeral else "no MLFLOW_TRACKING_URI set"
    with stage("tracking", f"{why}: starting an ephemeral MLflow server in {directory}"):
        url, _ = start_tracking_server(Path(directory).resolve())
    github.write_outputs(ephemeral="true")
    github.export_env("MLFLOW_TRACKING_URI", url)
    github.write_summary(
        "> **Ephemeral tracking store.** No `MLFLOW_TRACKING_URI` secret or variable is set, so this job used a "
        "throwaway MLflow server on the runner. Nothing it registered or promoted persists after the job."
    )
    return url


def score_stage(params: Params, input_path: str, output: str, version: str | None, alias: str | None) -> str:
    """Batch-score a CSV with a released version (the alias, production by default, or --version)."""
    from api.settings import Settings
    from api.source import RefusedVersion, RegistrySource
    from pipeline.runtime import batch_scoring
    from pipeline.runtime.output_files import is_local_store, store_paths

    client = connection.connect(params)
    name = params.registry.model_name
    registry.require_model(client, name)
    # What the output and rejects files may never be: the local tracking store, or inside its artifacts.
    uri, artifacts = connection.tracking_uri(params), [params.registry.artifact_location]
    if is_local_store(uri) and (experiment := client.get_experiment_by_name(params.registry.experiment)):
        artifacts.append(experiment.artifact_location)
    protected = store_paths(uri, artifacts)
    alias = alias or params.registry.production_alias
    settings = Settings(model_name=name, model_alias=alias, max_batch_size=batch_scoring.CHUNK_ROWS)
    source = RegistrySource(settings, client=client, verify_key=release_keys.verify_key())
    if version is None:
        version = registry.alias_version(client, name, alias)
        if version is None:
            raise ConfigError(f"model {name!r} has no alias @{alias}")
    registry.get_version(client, name, version)  # exit 1 naming it when there is no such version
    with stage("score", f"{input_path} with {name} version {version} -> {output}"):
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


def keygen_stage(out: str) -> str:
    """Write a release key pair; returns where."""
    private, public = release_keys.write_key_pair(Path(out))
    say(f"  store {private} as the secret RELEASE_SIGNING_KEY and {public} as RELEASE_VERIFY_KEY (see README)")
    return f"{private}\n{public}"


def pr_comment_stage(path: str) -> str:
    """Post the gate report as the PR's single, updated comment."""
    report = Path(path)
    if not report.is_file():
        raise ConfigError(f"{path} does not exist: run the gate first")
    return github.upsert_pr_comment(report.read_text(), COMMENT_MARKER)


def run_all(params: Params) -> str:
    """The whole flow: train, gate, register, smoke, promote. Returns the promoted version."""
    run_id = train_stage(params)
    gate_stage(params, run_id)
    version = register_stage(params, run_id)
    smoke_stage(params, version)
    promote_stage(params, version)
    return version


def _get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"run {run_id!r} not found in the tracking store: {exc.message}") from None


def _candidate(client: MlflowClient, params: Params) -> str:
    version = registry.alias_version(client, params.registry.model_name, params.registry.candidate_alias)
    if version is None:
        raise ConfigError(f"no --version given and @{params.registry.candidate_alias} points at nothing")
    return version
