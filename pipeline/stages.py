"""The stages of the gated flow, each one command of the CLI.

Each stage reads params, talks to MLflow through the adapters and returns a
plain value; a check that says no raises CheckFailed after recording why.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gates.report import GateReport
from gates.rules import Baseline, evaluate_gates
from gates.smoke_checks import Check, SmokeReport
from pipeline import registry, tracking
from pipeline.churn_data import generate_churn
from pipeline.config import Params
from pipeline.data import load_dataset
from pipeline.errors import CheckFailed, ConfigError
from pipeline.policy import check_promotion, rollback_target
from pipeline.progress import say, stage
from pipeline.provenance import git_sha
from pipeline.serving import uvicorn_process
from pipeline.smoke import smoke_http
from pipeline.train import evaluate, train

REPORTS = Path("reports")


def make_data(params: Params) -> Path:
    """Write the generated churn data set to `data.path`."""
    path = Path(params.data.path)
    with stage("data", f"generating {params.data.rows} churn-shaped rows (seed {params.data.seed}) into {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        generate_churn(params.data.rows, params.data.seed).to_csv(path, index=False)
    return path


def train_stage(params: Params) -> str:
    """Fit, score and log a run; returns the run id."""
    with stage("train", f"{params.model.type} on {params.data.path}"):
        data = load_dataset(params.data)
        for note in data.notes:
            say(f"  note: {note}")
        result = train(data, params.model, params.data.test_size, params.data.seed)
        say(
            f"  {data.rows} rows, {len(data.schema)} features; "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        )
        client = tracking.connect(params)
        run_id = tracking.log_training_run(client, params, data, result)
        say(f"  logged run {run_id}")
    return run_id


def gate_stage(params: Params, run_id: str) -> GateReport:
    """Evaluate the gates for a run, write and log the report; CheckFailed when a gate fails."""
    client = tracking.connect(params)
    run = _get_run(client, run_id)
    name = params.registry.model_name
    with stage("gate", f"f1 >= {params.gates.f1_min}, max f1 drop vs production {params.gates.max_f1_drop}"):
        baseline = None
        production = registry.alias_version(client, name, params.registry.production_alias)
        if production is not None and params.gates.max_f1_drop is not None:
            baseline = _score_production(client, name, production, run_id)
        rules = evaluate_gates(run.data.metrics, baseline, params.gates.f1_min, params.gates.max_f1_drop)
        report = GateReport(
            model_name=name,
            run_id=run_id,
            git_sha=run.data.tags.get("git_sha", git_sha()),
            metrics={k: v for k, v in run.data.metrics.items() if k in registry.METRICS},
            rules=rules,
            baseline=baseline,
        )
        REPORTS.mkdir(exist_ok=True)
        (REPORTS / "gate.json").write_text(report.to_json())
        (REPORTS / "gate.md").write_text(report.to_markdown())
        client.log_text(run_id, report.to_json(), "gate/gate.json")
        client.log_text(run_id, report.to_markdown(), "gate/gate.md")
        client.set_tag(run_id, "gate.baseline_version", production or "")
        client.set_tag(run_id, "gate", report.verdict)
        for rule in rules:
            say(f"  {'pass' if rule.passed else 'FAIL'} {rule.rule}: {rule.detail}")
    if not report.passed:
        raise CheckFailed(f"gate failed for run {run_id}; report in {REPORTS / 'gate.md'} and on the run")
    return report


def _score_production(client: MlflowClient, name: str, version: str, run_id: str) -> Baseline:
    """Score the production version on the candidate's own test set."""
    X, y = tracking.load_test_set(client, run_id)
    _, positive_label = tracking.load_feature_schema(client, run_id)
    try:
        model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
        return Baseline(version, evaluate(model, X, y, positive_label))
    except Exception as exc:  # a production model that cannot score this data is reported, not crashed on
        return Baseline(version, None, f"{type(exc).__name__}: {exc}")


def register_stage(params: Params, run_id: str) -> str:
    """Register a gated run and point the candidate alias at it; returns the version."""
    client = tracking.connect(params)
    _get_run(client, run_id)
    with stage("register", f"run {run_id} as {params.registry.model_name}"):
        version, created = registry.register(
            client, params.registry.model_name, run_id, params.registry.candidate_alias
        )
        say(
            f"  version {version} {'registered' if created else 'was already registered'}; "
            f"@{params.registry.candidate_alias} -> {version}"
        )
    return version


def smoke_stage(params: Params, version: str | None = None, base_url: str | None = None) -> SmokeReport:
    """Smoke-test a served version and record the verdict on it.

    Against `base_url` when given, else against a uvicorn process started here
    serving exactly that version from the registry.
    """
    client = tracking.connect(params)
    name = params.registry.model_name
    version = version or _candidate(client, params)
    mv = registry.get_version(client, name, version)
    examples = tracking.load_smoke_examples(client, mv.run_id)
    where = base_url or "a local uvicorn process"
    with stage("smoke", f"version {version} served by {where}"):
        if base_url:
            report = smoke_http(base_url, version, examples, params.smoke, target=base_url)
        else:
            report = _smoke_local(params, name, version, examples)
        registry.record_smoke(client, name, version, report.passed, report.target, report.summary())
        for check in report.checks:
            say(f"  {'pass' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    if not report.passed:
        raise CheckFailed(f"smoke failed for version {version}: {report.summary()}")
    return report


def _smoke_local(params: Params, name: str, version: str, examples: dict) -> SmokeReport:
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(params), "MODEL_NAME": name, "MODEL_VERSION": version}
    target = f"uvicorn api.app:app (MODEL_VERSION={version})"
    try:
        with uvicorn_process(env, startup_timeout_s=params.smoke.ready_timeout_s) as url:
            return smoke_http(url, version, examples, params.smoke, target=f"{target} at {url}")
    except CheckFailed as exc:
        return SmokeReport(version, target, [Check("start", False, str(exc))])


def promote_stage(params: Params, version: str) -> None:
    """Move production to `version` if and only if the compare-and-set holds."""
    client = tracking.connect(params)
    reg = params.registry
    registry.require_model(client, reg.model_name)
    with stage("promote", f"version {version} to @{reg.production_alias}"):
        state = registry.version_state(registry.get_version(client, reg.model_name, version))
        candidate = registry.alias_version(client, reg.model_name, reg.candidate_alias)
        production = registry.alias_version(client, reg.model_name, reg.production_alias)
        if not check_promotion(state, candidate, production):
            say(f"  @{reg.production_alias} already points at {version}; nothing to do")
            return
        registry.move_alias(
            client, reg.model_name, reg.production_alias, version, reason="promoted after gates and smoke passed"
        )
        say(f"  @{reg.production_alias}: {production or 'nothing'} -> {version}")


def rollback_stage(params: Params, reason: str, to: str | None = None) -> str:
    """Move production back to the previous good version, or to `to`; returns the version."""
    if not reason or not reason.strip():
        raise ConfigError("rollback needs a --reason saying why")
    client = tracking.connect(params)
    reg = params.registry
    registry.require_model(client, reg.model_name)
    production = registry.alias_version(client, reg.model_name, reg.production_alias)
    with stage(
        "rollback", f"@{reg.production_alias} from {production or 'nothing'} to {to or 'the previous good version'}"
    ):
        states = [registry.version_state(v) for v in registry.versions(client, reg.model_name)]
        target = rollback_target(states, production, to)
        if target.version == production:
            say(f"  @{reg.production_alias} already points at {production}; nothing to do")
            return production
        registry.move_alias(
            client, reg.model_name, reg.production_alias, target.version, reason=f"rollback: {reason.strip()}"
        )
        say(f"  @{reg.production_alias}: {production} -> {target.version}")
    return target.version


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
