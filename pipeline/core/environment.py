"""Every environment variable the pipeline reads, declared once with its default and read in one place.

A stage reads them once (Context.open, or PipelineEnv.read() in a stage
without a tracking store) and passes the values on. Processes the pipeline
starts inherit the whole environment; that is handing it down, not reading it.
The API's own settings are api/settings.py's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from api.release.verdicts import SIGNING_KEY_VAR, VERIFY_KEY_VAR

GITHUB_API = "https://api.github.com"
# The prediction log's root when PREDICTION_LOG_URI is unset (embedded mode): a folder of the working directory,
# the project's, where `python -m api` runs with PREDICTION_LOG_URI=predictions-log writes it too.
DEFAULT_PREDICTION_LOG = "predictions-log"
MLFLOW_AUTH_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass(frozen=True)
class GitHubEnv:
    """GitHub Actions' variables; outside Actions they are empty and every GitHub step does nothing."""

    actions: bool = False  # GITHUB_ACTIONS=true: running in GitHub Actions
    output: str = ""  # GITHUB_OUTPUT: the step outputs file
    step_summary: str = ""  # GITHUB_STEP_SUMMARY: the job summary file
    env_file: str = ""  # GITHUB_ENV: variables for the job's later steps
    event_path: str = ""  # GITHUB_EVENT_PATH: the event (a pull request's number)
    token: str = field(default="", repr=False)  # GITHUB_TOKEN
    repository: str = ""  # GITHUB_REPOSITORY: OWNER/NAME
    api_url: str = GITHUB_API  # GITHUB_API_URL (set but empty: empty)
    sha: str = ""  # GITHUB_SHA: the commit being built
    actor: str = ""  # GITHUB_ACTOR: who started the workflow


@dataclass(frozen=True)
class RelayEnv:
    """alert-relay's own variables, as given (runtime/alert_relay.py checks them)."""

    token: str = field(default="", repr=False)  # ALERT_RELAY_TOKEN
    insecure_no_token: str = ""  # ALERT_RELAY_INSECURE_NO_TOKEN
    window_s: str = ""  # ALERT_RELAY_WINDOW_S (empty: the default)


@dataclass(frozen=True)
class PipelineEnv:
    """What the environment tells the pipeline; empty text where a variable is unset."""

    tracking_uri: str = field(default="", repr=False)  # MLFLOW_TRACKING_URI: wins over params.yaml's
    production_tracking_uri: str = field(default="", repr=False)  # PRODUCTION_TRACKING_URI: the gate's production
    # MLFLOW_TRACKING_USERNAME, _PASSWORD and _TOKEN, those set: a container of the API gets them too.
    mlflow_auth: Mapping[str, str] = field(default_factory=dict, repr=False)
    signing_key: str = field(default="", repr=False)  # RELEASE_SIGNING_KEY
    verify_key: str = ""  # RELEASE_VERIFY_KEY
    kubeconfig: str = ""  # KUBECONFIG: a cluster to apply the overlay to
    prometheus_url: str = ""  # PROMETHEUS_URL: live metrics for rollout and watch
    prometheus_environment: str = ""  # PROMETHEUS_ENVIRONMENT
    image_repository: str = ""  # IMAGE_REPOSITORY: where publish pushes
    registry_username: str = ""  # REGISTRY_USERNAME
    registry_password: str = field(default="", repr=False)  # REGISTRY_PASSWORD
    containers_conf: str | None = None  # CONTAINERS_CONF (podman; None: unset)
    containers_storage_conf: str | None = None  # CONTAINERS_STORAGE_CONF (podman; None: unset)
    cache_home: str | None = None  # XDG_CACHE_HOME: where the serving wheels are cached (None: unset)
    score_max_cell_bytes: str = ""  # SCORE_MAX_CELL_BYTES, as given (score checks it; empty: the default)
    score_max_batch_bytes: str = ""  # SCORE_MAX_BATCH_BYTES, as given
    feature_store_url: str = field(default="", repr=False)  # FEATURE_STORE_URL: the online store smoke's API reads
    # PREDICTION_LOG_URI: the prediction log's root, a local folder or s3://BUCKET/PREFIX (unset: predictions-log/)
    prediction_log_uri: str = field(default=DEFAULT_PREDICTION_LOG, repr=False)
    github: GitHubEnv = GitHubEnv()
    relay: RelayEnv = RelayEnv()

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> PipelineEnv:
        """The variables of `environ` (default: this process's environment)."""
        env = os.environ if environ is None else environ
        get = env.get
        return cls(
            tracking_uri=get("MLFLOW_TRACKING_URI", ""),
            production_tracking_uri=get("PRODUCTION_TRACKING_URI", ""),
            mlflow_auth={name: env[name] for name in MLFLOW_AUTH_VARIABLES if get(name)},
            signing_key=get(SIGNING_KEY_VAR, ""),
            verify_key=get(VERIFY_KEY_VAR, ""),
            kubeconfig=get("KUBECONFIG", ""),
            prometheus_url=get("PROMETHEUS_URL", ""),
            prometheus_environment=get("PROMETHEUS_ENVIRONMENT", ""),
            image_repository=get("IMAGE_REPOSITORY", ""),
            registry_username=get("REGISTRY_USERNAME", ""),
            registry_password=get("REGISTRY_PASSWORD", ""),
            containers_conf=get("CONTAINERS_CONF"),
            containers_storage_conf=get("CONTAINERS_STORAGE_CONF"),
            cache_home=get("XDG_CACHE_HOME"),
            score_max_cell_bytes=get("SCORE_MAX_CELL_BYTES", ""),
            score_max_batch_bytes=get("SCORE_MAX_BATCH_BYTES", ""),
            feature_store_url=get("FEATURE_STORE_URL", ""),
            prediction_log_uri=get("PREDICTION_LOG_URI", "") or DEFAULT_PREDICTION_LOG,
            github=GitHubEnv(
                actions=get("GITHUB_ACTIONS") == "true",
                output=get("GITHUB_OUTPUT", ""),
                step_summary=get("GITHUB_STEP_SUMMARY", ""),
                env_file=get("GITHUB_ENV", ""),
                event_path=get("GITHUB_EVENT_PATH", ""),
                token=get("GITHUB_TOKEN", ""),
                repository=get("GITHUB_REPOSITORY", ""),
                api_url=get("GITHUB_API_URL", GITHUB_API),
                sha=get("GITHUB_SHA", ""),
                actor=get("GITHUB_ACTOR", ""),
            ),
            relay=RelayEnv(
                token=get("ALERT_RELAY_TOKEN", ""),
                insecure_no_token=get("ALERT_RELAY_INSECURE_NO_TOKEN", ""),
                window_s=get("ALERT_RELAY_WINDOW_S", ""),
            ),
        )

    def prometheus_vars(self) -> dict[str, str]:
        """PROMETHEUS_URL and PROMETHEUS_ENVIRONMENT, as runtime/live_metrics.py's metrics_source reads them."""
        return {"PROMETHEUS_URL": self.prometheus_url, "PROMETHEUS_ENVIRONMENT": self.prometheus_environment}

    def publish_vars(self) -> dict[str, str]:
        """What runtime/image_publish.py reads: the repository (given, or GitHub's) and the registry's login."""
        return {
            "IMAGE_REPOSITORY": self.image_repository,
            "GITHUB_REPOSITORY": self.github.repository,
            "REGISTRY_USERNAME": self.registry_username,
            "REGISTRY_PASSWORD": self.registry_password,
        }
