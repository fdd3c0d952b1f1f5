"""GitHub Actions glue, all optional: outputs, job summaries and the PR comment.

Each function does nothing outside Actions (when its variable is unset), so
every stage runs the same on a laptop. Stages hand in the variables they read
once (ctx.env.github); without them, a function reads the environment's.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx

from api.release.redact import redact
from pipeline.ci.progress import say
from pipeline.core.environment import GITHUB_API, GitHubEnv, PipelineEnv


def file_command(name: str, value: str) -> str:
    """One `name<<DELIMITER` entry of a GitHub file command: a newline in `value` cannot start a new variable."""
    if "\n" in name or "=" in name or "<" in name:
        raise ValueError(f"not a variable name: {name!r}")
    delimiter = f"ghadelimiter_{secrets.token_hex(16)}"  # random, so no value can contain it
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def write_outputs(github: GitHubEnv | None = None, /, **values: str) -> None:
    """Step outputs (`$GITHUB_OUTPUT`), e.g. run_id and version for later jobs."""
    path = (github or PipelineEnv.read().github).output
    if path:
        with open(path, "a") as out:
            for key, value in values.items():
                out.write(file_command(key, redact(value)))


def write_summary(markdown: str, github: GitHubEnv | None = None) -> None:
    """Append to the job summary (`$GITHUB_STEP_SUMMARY`), credentials redacted."""
    path = (github or PipelineEnv.read().github).step_summary
    if path:
        with open(path, "a") as out:
            out.write(redact(markdown).rstrip() + "\n\n")


def export_env(name: str, value: str, github: GitHubEnv | None = None) -> None:
    """Set an environment variable for the job's later steps (`$GITHUB_ENV`)."""
    path = (github or PipelineEnv.read().github).env_file
    if path:
        with open(path, "a") as out:
            out.write(file_command(name, value))


def upsert_pr_comment(
    markdown: str, marker: str, transport: httpx.BaseTransport | None = None, github: GitHubEnv | None = None
) -> str:
    """Create the PR comment carrying `marker`, or update it in place; returns what happened.

    A token without write access (pull requests from forks) is not an error:
    the job summary still carries the report.
    """
    github = github or PipelineEnv.read().github
    token, repo = github.token, github.repository
    number = _pull_request_number(github.event_path)
    if not (token and repo and number):
        return "skipped: not a pull request run with GITHUB_TOKEN and GITHUB_REPOSITORY"
    api = github.api_url
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
    markdown = redact(markdown)
    with httpx.Client(base_url=api, headers=headers, timeout=30, transport=transport) as http:
        try:
            existing = None
            url: str | None = f"/repos/{repo}/issues/{number}/comments"
            while url and existing is None:
                page = http.get(url, params={"per_page": 100})
                page.raise_for_status()
                existing = next((c for c in page.json() if marker in (c.get("body") or "")), None)
                url = page.links.get("next", {}).get("url")
            if existing:
                http.patch(
                    f"/repos/{repo}/issues/comments/{existing['id']}", json={"body": markdown}
                ).raise_for_status()
                return f"updated comment {existing['id']}"
            created = http.post(f"/repos/{repo}/issues/{number}/comments", json={"body": markdown})
            created.raise_for_status()
            return f"created comment {created.json()['id']}"
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in (401, 403, 404):
                say(f"  cannot comment ({exc.response.status_code}); a fork's token is read-only. See the job summary.")
                return f"skipped: {exc.response.status_code}"
            raise


def _pull_request_number(path: str) -> int | None:
    if not path or not Path(path).is_file():
        return None
    event = json.loads(Path(path).read_text())
    return (event.get("pull_request") or {}).get("number")


class DispatchFailed(Exception):
    """GitHub did not accept a repository_dispatch (its status, or the connection's error; never the token)."""


def repository_dispatch(
    repository: str,
    token: str,
    body: dict[str, object],
    api_url: str = GITHUB_API,
    transport: httpx.BaseTransport | None = None,
    timeout_s: float = 15,
) -> None:
    """`POST /repos/{repository}/dispatches` with `body` (event_type, client_payload); GitHub answers 204.

    The token (a fine-grained token or GitHub App token with Contents: write on
    the repository) goes in the Authorization header only.
    """
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    url = f"{api_url.rstrip('/')}/repos/{repository}/dispatches"
    try:
        with httpx.Client(headers=headers, timeout=timeout_s, transport=transport) as http:
            answer = http.post(url, json=body)
    except httpx.HTTPError as exc:
        raise DispatchFailed(f"POST {redact(url)}: {type(exc).__name__}") from None
    if answer.status_code not in (200, 201, 202, 204):
        detail = " ".join(answer.text.split())[:200]
        raise DispatchFailed(f"POST {redact(url)} answered {answer.status_code}: {redact(detail)}")
