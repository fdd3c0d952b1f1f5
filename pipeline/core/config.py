"""params.yaml loaded once into typed, frozen objects.

An unknown key, a duplicate key or a wrong type fails at load time with the
key's dotted name, never as a KeyError in the middle of a run. Types are
strict (a boolean is not a number), and YAML is read with YAML 1.2 booleans,
so `Yes` is the text "Yes", not True.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from api.settings import Settings
from pipeline.core.errors import ConfigError

ALIAS_NAME = re.compile(r"^[\w\-]{1,255}$")  # MLflow's rule; `latest` and `v<N>` are reserved
RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)


class Section(BaseModel):
    """A params section: frozen, strictly typed, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(Section):
    """`data`: the CSV, its target and positive label, the id column and the split."""

    path: str = "data/churn.csv"
    target: str = "Churn"
    # Compared as text, so `1` in YAML matches a 0/1 target column.
    positive_label: str = "Yes"
    id_column: str | None = "customerID"
    test_size: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: int = 42
    rows: Annotated[int, Field(gt=0)] = 7043  # size of the generated default data set

    @field_validator("positive_label", mode="before")
    @classmethod
    def _label_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class LogisticRegressionParams(Section):
    """`model.logistic_regression`: its hyperparameters."""

    C: Annotated[float, Field(gt=0)] = 1.0
    max_iter: Annotated[int, Field(gt=0)] = 1000
    class_weight: Literal["balanced"] | None = "balanced"


class RandomForestParams(Section):
    """`model.random_forest`: its hyperparameters."""

    n_estimators: Annotated[int, Field(gt=0)] = 200
    max_depth: Annotated[int, Field(gt=0)] | None = 10
    min_samples_leaf: Annotated[int, Field(gt=0)] = 5
    class_weight: Literal["balanced", "balanced_subsample"] | None = "balanced"


class HistGradientBoostingParams(Section):
    """`model.hist_gradient_boosting`: its hyperparameters."""

    learning_rate: Annotated[float, Field(gt=0)] = 0.05
    max_iter: Annotated[int, Field(gt=0)] = 200
    max_depth: Annotated[int, Field(gt=0)] | None = None
    class_weight: Literal["balanced"] | None = "balanced"


ModelType = Literal["logistic_regression", "random_forest", "hist_gradient_boosting"]


class ModelParams(Section):
    """`model`: the estimator type and the hyperparameters of each."""

    type: ModelType = "logistic_regression"
    logistic_regression: LogisticRegressionParams = LogisticRegressionParams()
    random_forest: RandomForestParams = RandomForestParams()
    hist_gradient_boosting: HistGradientBoostingParams = HistGradientBoostingParams()

    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters of the selected model type."""
        section: Section = getattr(self, self.type)
        return section.model_dump()


class MetricGate(Section):
    """`min`: the candidate's value must reach it. `max_drop`: non-inferiority margin against production."""

    min: float | None = None
    max_drop: Annotated[float, Field(ge=0)] | None = None


class SliceGates(Section):
    """`gates.slices`: per column, no slice of `min_rows` or more may lose over `max_f1_drop` F1 vs production."""

    columns: list[str] = []
    min_rows: Annotated[int, Field(gt=0)] = 100  # smaller slices are shown, not gated
    max_f1_drop: Annotated[float, Field(ge=0, le=1)] = 0.05


class DriftGates(Section):
    """Data-profile changes are warnings; a threshold here makes one a rule (null: warn only)."""

    max_psi: Annotated[float, Field(ge=0)] | None = None  # per numeric column
    max_unseen_share: Annotated[float, Field(ge=0, le=1)] | None = None  # rows with categories production never saw


# The round-one keys, still accepted as shorthand for gates.metrics.f1.
LEGACY_GATE_KEYS = {"f1_min": "min", "max_f1_drop": "max_drop"}


class GateParams(Section):
    """`gates`: the metric gates, the bootstrap, slices, drift and whether a schema break is allowed."""

    confidence: Annotated[float, Field(gt=0.5, lt=1)] | None = 0.95  # null: compare point estimates
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = 1000
    metrics: dict[str, MetricGate] = {"f1": MetricGate(min=0.55, max_drop=0.02)}
    slices: SliceGates = SliceGates()
    allow_breaking_schema: bool = False
    drift: DriftGates = DriftGates()

    @model_validator(mode="before")
    @classmethod
    def _legacy_f1_keys(cls, data: Any) -> Any:
        """`f1_min` / `max_f1_drop` set gates.metrics.f1.min / max_drop (and win, as --set does)."""
        if not isinstance(data, dict) or not LEGACY_GATE_KEYS.keys() & data.keys():
            return data
        data = dict(data)
        metrics = dict(data.get("metrics") or {"f1": {"min": 0.55, "max_drop": 0.02}})
        f1 = dict(metrics.get("f1") or {})
        for legacy, key in LEGACY_GATE_KEYS.items():
            if legacy in data:
                value = data.pop(legacy)
                if isinstance(value, bool) or not (value is None or isinstance(value, int | float)):
                    raise ValueError(f"gates.{legacy}: must be a number (got {value!r})")
                f1[key] = value
        metrics["f1"] = f1
        data["metrics"] = metrics
        return data

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, value: dict[str, MetricGate]) -> dict[str, MetricGate]:
        for name, gate in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_.\-/ ]{1,250}", name):
                raise ValueError(f"{name!r} is not a metric name")
            if gate.min is None and gate.max_drop is None:
                raise ValueError(f"metric {name!r} has neither min nor max_drop: nothing to gate")
        return value


class CardParams(Section):
    """What the model card says about use; the rest of the card comes from the run and the gate."""

    intended_use: str = "Scores customers' risk of churning, for retention outreach ranked by probability."
    limitations: str = "Trained on one snapshot of customer data; not for decisions about individuals without review."


class MonitoringParams(Section):
    """`monitoring`: the PSI levels at which live drift warns and asks for a rollback (deploy/prometheus/rules.yml).

    Prometheus cannot read this file: tests/deploy/test_prometheus_rules.py fails while the rules' thresholds
    (and the dashboard's) differ from these.
    """

    # PSI clamps empty bins to 1e-4 (gates/profile.py), so a total shift scores about 18: past 10, nothing alerts.
    drift_warn_psi: Annotated[float, Field(gt=0, le=10)] = 0.1
    drift_alert_psi: Annotated[float, Field(gt=0, le=10)] = 0.25

    @model_validator(mode="after")
    def _warn_before_alert(self) -> MonitoringParams:
        if self.drift_warn_psi >= self.drift_alert_psi:
            raise ValueError(
                f"drift_warn_psi ({self.drift_warn_psi}) must be below drift_alert_psi ({self.drift_alert_psi})"
            )
        return self


class RegistryParams(Section):
    """`registry`: the tracking store, the experiment, the registered model and its two aliases."""

    tracking_uri: str = "sqlite:///mlflow.db"
    # Where artifacts go when the experiment is created on a local database
    # store; a tracking server decides for itself.
    artifact_location: str = "mlartifacts"
    experiment: str = "churn"
    model_name: str = "churn-classifier"
    candidate_alias: str = "candidate"
    production_alias: str = "production"

    @field_validator("candidate_alias", "production_alias")
    @classmethod
    def _alias_name(cls, value: str) -> str:
        if not ALIAS_NAME.match(value) or RESERVED_ALIAS.match(value):
            raise ValueError(
                "not a valid alias name (letters, digits, _ and -, at most 255; `latest` and `v<N>` are reserved)"
            )
        return value

    @model_validator(mode="after")
    def _aliases_differ(self) -> RegistryParams:
        if self.candidate_alias == self.production_alias:
            raise ValueError(
                f"candidate_alias and production_alias are both {self.production_alias!r}: "
                "registering would move production without gate and smoke"
            )
        return self


class SmokeParams(Section):
    """`smoke`: how many stored examples to ask, the latency budget and how long to wait for /ready."""

    examples: Annotated[int, Field(gt=0, le=1000)] = 25
    latency_budget_ms: Annotated[float, Field(gt=0)] = 250.0
    ready_timeout_s: Annotated[float, Field(gt=0)] = 120.0


class ServingParams(Section):
    """What the API smoke starts is configured with, as a deployment would be (defaults: the API's own)."""

    max_batch_size: Annotated[int, Field(gt=0)] = Settings.max_batch_size
    reload_interval_s: Annotated[float, Field(gt=0)] = Settings.reload_interval_s


# `rollout`: how a new version reaches production through shadow and canary steps, and the bake after it.
# Every threshold shows in a pull request's policy diff (gates/policy_diff.py), as the gates' do. Defaults suit
# the generated data: a retrain of production agrees with it on more than 99 % of records and scores alike, so
# 5 % disagreement or a score PSI of 0.1 is a different model, not noise.
Share = Annotated[float, Field(gt=0, le=1)]
Seconds = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
Ceiling = Annotated[float, Field(ge=0)] | None  # null: the rule is not judged


class ShadowPhase(Section):
    """Production answers; a sampled copy goes to the canary; the two are compared on the same records."""

    sample_share: Share = 0.5
    min_requests: Count = 200  # shadowed records before the phase is judged
    min_duration_s: Seconds = 30
    max_disagreement: Ceiling = 0.05  # share of shadowed records whose labels differ from production's
    max_score_psi: Ceiling = 0.1  # PSI between the two versions' score distributions


class CanaryStep(Section):
    """The canary answers `weight` percent of requests for at least this long and this many requests."""

    weight: Annotated[int, Field(gt=0, le=100)]
    min_duration_s: Seconds = 30
    min_requests: Count = 200  # requests the canary answered in the step


class StepRules(Section):
    """What each canary step is judged by, on that step's window."""

    max_error_ratio: Ceiling = 0.01  # the canary's 5xx per request
    max_p99_ms: Ceiling = 250.0  # the canary's p99 latency on /predict
    max_p99_ratio: Ceiling = 1.5  # the canary's p99 over production's, in the same window
    max_score_psi: Ceiling = 0.1  # the canary's score distribution against production's, same window


class BakeRules(Section):
    """After promotion, `watch` judges production for `duration_s`; a rule that fails rolls it back."""

    duration_s: Seconds = 300
    poll_s: Seconds = 10
    min_requests: Count = 100  # requests before the rules are judged at all
    max_error_ratio: Ceiling = 0.01  # 5xx per request
    max_client_error_ratio: Ceiling = 0.05  # 4xx per request: clients the new version breaks
    max_p99_ms: Ceiling = 250.0
    max_drift_psi: Ceiling = 0.25  # any feature's live PSI against the version's training profile


class RolloutParams(Section):
    """`rollout`: the canary alias, the shadow phase, the canary steps and their rules, the bake."""

    canary_alias: str = "canary"
    shadow: ShadowPhase = ShadowPhase()
    steps: list[CanaryStep] = [CanaryStep(weight=10), CanaryStep(weight=50)]
    step_rules: StepRules = StepRules()
    bake: BakeRules = BakeRules()
    phase_timeout_s: Seconds = 600  # a phase that has not seen its requests by then aborts the rollout
    poll_s: Seconds = 2  # how often live metrics are read during a phase

    @field_validator("canary_alias")
    @classmethod
    def _alias_name(cls, value: str) -> str:
        if not ALIAS_NAME.match(value) or RESERVED_ALIAS.match(value):
            raise ValueError("not a valid alias name")
        return value

    @field_validator("steps")
    @classmethod
    def _growing(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        weights = [step.weight for step in steps]
        if weights != sorted(set(weights)):
            raise ValueError(f"canary weights must grow step by step, got {weights}")
        return steps


# Kubernetes names: a Deployment (DNS-1123 subdomain) and an image name as kustomize's `images:` matches it.
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
IMAGE_NAME = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*$")


class DeployParams(Section):
    """`deploy`: the Kubernetes overlay promote and rollback pin to the moved-to version's published image.

    `overlay` null: production is not on Kubernetes, and alias moves deploy nothing.
    """

    overlay: str | None = "deploy/k8s/overlays/production"  # a kustomize folder, relative to the working directory
    image_name: str = "churn-api"  # the `images:` entry (the base's container image name)
    deployment: str = "churn-api"  # whose rollout `kubectl rollout status` waits for
    rollout_timeout_s: Annotated[int, Field(gt=0, le=3600)] = 300

    @field_validator("deployment")
    @classmethod
    def _deployment_name(cls, value: str) -> str:
        if not K8S_NAME.match(value):
            raise ValueError("not a Kubernetes object name (lowercase letters, digits, - and .)")
        return value

    @field_validator("image_name")
    @classmethod
    def _image_name(cls, value: str) -> str:
        if not IMAGE_NAME.match(value):
            raise ValueError("not an image name (lowercase letters, digits, and . _ - / between them)")
        return value


class Params(Section):
    """The whole params file, one section per key."""

    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    gates: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    smoke: SmokeParams = SmokeParams()
    monitoring: MonitoringParams = MonitoringParams()
    serving: ServingParams = ServingParams()
    deploy: DeployParams = DeployParams()
    card: CardParams = CardParams()
    rollout: RolloutParams = RolloutParams()


class ParamsLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false) that refuses duplicate keys."""

    yaml_implicit_resolvers: typing.ClassVar = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping of `node`; ConstructorError naming both lines when a key appears twice."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """The YAML document in `text`, read with ParamsLoader."""
    return yaml.load(text, Loader=ParamsLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=VALUE` into its key path and a value: the text itself for text fields, else YAML-typed."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    path = key.strip().split(".")
    if _is_text_field(path) and raw.strip() not in ("null", "~"):
        return path, raw
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def _is_text_field(path: list[str]) -> bool:
    """True when the params key at `path` holds text (a str, or an optional str)."""
    model: Any = Params
    annotation: Any = None
    for part in path:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        model = annotation
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return str in options


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `--set KEY=VALUE` applied."""
    merged = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return merged


def build_params(raw: dict[str, Any]) -> Params:
    """Validate a raw mapping into Params, naming the offending key on error."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key {key}")
            elif isinstance(err.get("input"), dict):  # a section-level rule: the value is the whole section
                problems.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
            else:
                problems.append(f"{key}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
        raise ConfigError("invalid params: " + "; ".join(problems)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read a params file, apply overrides and validate."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read params file {path}: {exc.strerror}") from None
    try:
        raw = read_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return build_params(apply_overrides(raw, overrides or []))


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}
