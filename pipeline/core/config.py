"""params.yaml loaded once into typed, frozen objects: the sections, and Params holding them.

An unknown key, a duplicate key or a wrong type fails at load time with the
key's dotted name, never as a KeyError in the middle of a run. Types are
strict (a boolean is not a number), and YAML is read with YAML 1.2 booleans,
so `Yes` is the text "Yes", not True. Reading the file is params_file.py's; the
`rollout` section, rollout_params.py's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from api.settings import Settings
from families import FAMILIES, Family, FamilyParams
from features import transformer_class
from gates.bootstrap import METRICS as RECOMPUTED_METRICS
from pipeline.core.params_section import ALIAS_NAME, RESERVED_ALIAS, Section
from pipeline.core.rollout_params import RolloutParams


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


class FeatureStep(Section):
    """One step of the team's feature code (`model.features`): `module.Class` of features/, and its arguments."""

    transformer: str
    args: dict[str, bool | int | float | str | list[bool | int | float | str] | None] = {}  # noqa: RUF012 (a pydantic field: each instance gets a copy)

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"transformer": value} if isinstance(value, str) else value

    @field_validator("transformer")
    @classmethod
    def _known(cls, value: str) -> str:
        transformer_class(value)  # ValueError names the module or class features/ does not have
        return value


class _ModelSection(Section):
    """`model`: the family (`type`), the team's feature steps, and each family's hyperparameters."""

    type: str
    features: list[FeatureStep] = []  # noqa: RUF012 (a pydantic field: each instance gets a copy)

    @property
    def family(self) -> Family:
        """The declared family `type` names."""
        return FAMILIES[self.type]

    @property
    def hyperparameter_section(self) -> FamilyParams:
        """The selected family's params section."""
        section: FamilyParams = getattr(self, self.type)
        return section

    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters of the selected family."""
        return self.hyperparameter_section.model_dump()


# `model.type` and one `model.<family>` section per declared family (families/), derived, never listed by hand.
FamilyName = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]
if TYPE_CHECKING:

    class ModelParams(_ModelSection):
        """`model`: the family (`type`), the team's feature steps, and each family's hyperparameters."""

        def __init__(self, **values: Any) -> None: ...
        def __getattr__(self, family: str) -> FamilyParams: ...

else:
    ModelParams = create_model(
        "ModelParams",
        __base__=_ModelSection,
        __doc__=_ModelSection.__doc__,
        __module__=__name__,
        type=(FamilyName, "logistic_regression"),
        **{name: (family.params, family.params()) for name, family in FAMILIES.items()},
    )


class MetricGate(Section):
    """`min`: the candidate's value must reach it. `max_drop`: non-inferiority margin against production.

    A negative `max_drop` is a gain the candidate must establish (the retrain's "beat production").
    """

    min: float | None = None
    max_drop: Annotated[float, Field(ge=-1)] | None = None


class SliceGates(Section):
    """`gates.slices`: per column, no slice of `min_rows` or more may lose over `max_f1_drop` F1 vs production."""

    columns: list[str] = []  # noqa: RUF012 (a pydantic field: each instance gets a copy)
    min_rows: Annotated[int, Field(gt=0)] = 100  # smaller slices are shown, not gated
    max_f1_drop: Annotated[float, Field(ge=0, le=1)] = 0.05


class DriftGates(Section):
    """Data-profile changes are warnings; a threshold here makes one a rule (null: warn only)."""

    max_psi: Annotated[float, Field(ge=0)] | None = None  # per numeric column
    max_unseen_share: Annotated[float, Field(ge=0, le=1)] | None = None  # rows with categories production never saw


class RecentOutcomesGate(Section):
    """`gates.recent_outcomes`: candidate vs production on the log's newest labelled rows, held out of training-set."""

    rows: Annotated[int, Field(gt=0)] = 500  # the newest labelled log rows held out and judged
    min_rows: Annotated[int, Field(gt=0)] = 200  # fewer scorable rows: not judged
    metric: str = "f1"  # one the gate recomputes with intervals (gates/bootstrap.py METRICS)
    max_drop: Annotated[float, Field(ge=-1, le=1)] = 0.02  # as gates.metrics.<m>.max_drop (negative: a gain)

    @model_validator(mode="after")
    def _consistent(self) -> RecentOutcomesGate:
        if self.min_rows > self.rows:
            raise ValueError(f"min_rows ({self.min_rows}) exceeds rows ({self.rows}): the rule could never judge")
        if self.metric not in RECOMPUTED_METRICS:
            raise ValueError(f"metric {self.metric!r} is not one the gate recomputes ({', '.join(RECOMPUTED_METRICS)})")
        return self


# The round-one keys, still accepted as shorthand for gates.metrics.f1.
LEGACY_GATE_KEYS = {"f1_min": "min", "max_f1_drop": "max_drop"}


class GateParams(Section):
    """`gates`: the metric gates, the bootstrap, slices, drift and whether a schema break is allowed."""

    confidence: Annotated[float, Field(gt=0.5, lt=1)] | None = 0.95  # null: compare point estimates
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = 1000
    metrics: dict[str, MetricGate] = {"f1": MetricGate(min=0.55, max_drop=0.02)}  # noqa: RUF012 (a pydantic field: each instance gets a copy)
    slices: SliceGates = SliceGates()
    allow_breaking_schema: bool = False
    drift: DriftGates = DriftGates()
    recent_outcomes: RecentOutcomesGate | None = None  # null: off (the retrain workflow turns it on)

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

    max_batch_size: Annotated[int, Field(gt=0)] = Settings.model_fields["max_batch_size"].default
    reload_interval_s: Annotated[float, Field(gt=0)] = Settings.model_fields["reload_interval_s"].default


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


# A Feast object name (project, view, service): what Feast itself accepts, and nothing that needs quoting.
FEAST_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SkewParams(Section):
    """`feature_store.skew`: the gate reads `sample` entities online and offline; numbers may differ by `tolerance`."""

    sample: Annotated[int, Field(gt=0, le=100_000)] = 200
    # Finite: an infinite tolerance would pass any numeric skew (nan is refused by ge=0 and here too).
    tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0e-9


class FeatureStoreParams(Section):
    """`feature_store`: training reads the feature service `service` point in time (null: the CSV at data.path).

    The serving settings (max ages, stale, the lookup timeout) travel with each version in its
    feature_service.json; `skew` is the gate's online/offline comparison.
    """

    service: str | None = None  # a feature service of `repo`, e.g. churn_model
    repo: str = "featurestore/repo"  # the Feast repository folder (feature_store.yaml, definitions)
    # The entity frame training reads: customerID, event_timestamp and the label (Parquet), one row per example.
    entities: str = "data/features/entities.parquet"
    # Per feature view: serving refuses (or warns about) online values older than this many seconds.
    max_age_s: dict[str, Annotated[int, Field(gt=0)]] = {"customer_profile": 7_776_000, "customer_account": 2_592_000}  # noqa: RUF012 (a pydantic field: each instance gets a copy)
    stale: Literal["refuse", "warn"] = "refuse"
    lookup_timeout_ms: Annotated[float, Field(gt=0, le=60_000)] = 50.0
    skew: SkewParams = SkewParams()

    @field_validator("service")
    @classmethod
    def _service_name(cls, value: str | None) -> str | None:
        if value is not None and not FEAST_NAME.match(value):
            raise ValueError("not a feature service name (letters, digits and _, not starting with a digit)")
        return value

    @field_validator("max_age_s")
    @classmethod
    def _view_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            if not FEAST_NAME.match(name):
                raise ValueError(f"{name!r} is not a feature view name")
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
    feature_store: FeatureStoreParams = FeatureStoreParams()
