"""Who and what made a change: the git sha and the actor."""

from __future__ import annotations

import getpass
import subprocess
from datetime import UTC, datetime

from pipeline.core.environment import PipelineEnv


def git_sha() -> str:
    """The commit being built: GITHUB_SHA in Actions, else the work tree's HEAD."""
    sha = PipelineEnv.read().github.sha
    if sha:
        return sha
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def actor() -> str:
    """Who is making the change: GITHUB_ACTOR in Actions, else the local user."""
    return PipelineEnv.read().github.actor or getpass.getuser()


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")
