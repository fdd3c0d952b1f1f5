"""tracking-server, keygen and status: the tracking store for the steps that follow, the release keys, the state."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core import release_keys
from pipeline.core.config import Params
from pipeline.core.environment import PipelineEnv
from pipeline.core.status_view import render_table
from pipeline.runtime.tracking_server import start_tracking_server
from pipeline.stages.context import Context
from pipeline.store import connection, status


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
    env = PipelineEnv.read()
    configured = None if ephemeral else env.tracking_uri
    if configured:
        connection.connect(params, env)  # fails fast, naming the server, if it is down
        github.write_outputs(env.github, ephemeral="false")
        github.export_env("MLFLOW_TRACKING_URI", configured, env.github)
        return configured
    why = "--ephemeral" if ephemeral else "no MLFLOW_TRACKING_URI set"
    with stage("tracking", f"{why}: starting an ephemeral MLflow server in {directory}"):
        url, _ = start_tracking_server(Path(directory).resolve())
    github.write_outputs(env.github, ephemeral="true")
    github.export_env("MLFLOW_TRACKING_URI", url, env.github)
    github.write_summary(
        "> **Ephemeral tracking store.** No `MLFLOW_TRACKING_URI` secret or variable is set, so this job used a "
        "throwaway MLflow server on the runner. Nothing it registered or promoted persists after the job.",
        env.github,
    )
    return url


def keygen_stage(out: str) -> str:
    """Write a release key pair; returns where."""
    private, public = release_keys.write_key_pair(Path(out))
    say(f"  store {private} as the secret RELEASE_SIGNING_KEY and {public} as RELEASE_VERIFY_KEY (see README)")
    return f"{private}\n{public}"


def status_stage(params: Params, as_json: bool) -> str:
    """Versions, aliases, verdicts, the ledger and its anomalies: one JSON object, or a table."""
    ctx = Context.open(params)
    state = status.collect(ctx.client, ctx.registry, ctx.verify_key, ctx.params.rollout.canary_alias)
    return json.dumps(state, indent=2) if as_json else render_table(state).rstrip("\n")
