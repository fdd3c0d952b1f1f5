"""The workflows' secret wiring, read as a contributor with a branch would read it.

The signing key and every write credential are secrets of the GitHub environments `release` and
`production` (deployment branches: the default branch only); a job outside them may read only the
read-only secrets below. Every environment job starts with the branch guard, which is run here for
real. Concurrency groups of different workflows never meet, so a burst of rollback dispatches cannot
cancel a waiting deploy (GitHub keeps one pending run per group and a newly queued one replaces it).
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..conftest import ROOT

WORKFLOWS = {path.name: yaml.safe_load(path.read_text()) for path in sorted(ROOT.glob(".github/workflows/*.yml"))}
ACTIONS = {path.parent.name: yaml.safe_load(path.read_text()) for path in ROOT.glob(".github/actions/*/action.yml")}
# Environments whose deployment branch policy is the default branch only (documented in the README).
PROTECTED_ENVIRONMENTS = {"release", "production"}
# What a branch's code may be given: where the tracking server is, and a user that may only read.
READ_ONLY_SECRETS = {"MLFLOW_TRACKING_URI", "MLFLOW_READ_USERNAME", "MLFLOW_READ_PASSWORD"}
RELEASE_SECRETS = {"RELEASE_SIGNING_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "KUBECONFIG"}
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)
SECRET = re.compile(r"\bsecrets\b(?:\s*\.\s*([A-Za-z_][\w-]*))?")
GUARD_NAME = "release jobs run on the default branch only"


def triggers(workflow: dict) -> set[str]:
    on = workflow.get("on", workflow.get(True))  # PyYAML reads the bare key `on` as True
    return {on} if isinstance(on, str) else set(on)


def secrets_in(node: object, key: str = "") -> list[str]:
    """Every secret an expression in `node` reads: its name, or '*' for the whole context (toJSON(secrets))."""
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "secrets" and v == "inherit":  # a reusable workflow handed every secret
                found.append("*")
            found += secrets_in(v, str(k))
    elif isinstance(node, list):
        for item in node:
            found += secrets_in(item, key)
    elif isinstance(node, str):
        expressions = EXPRESSION.findall(node) + ([node] if key == "if" else [])
        for expression in expressions:
            found += [match.group(1) or "*" for match in SECRET.finditer(expression)]
    return found


def environment(job: dict) -> str | None:
    env = job.get("environment")
    return env.get("name") if isinstance(env, dict) else env


def jobs() -> list[tuple[str, str, dict]]:
    return [(name, job_id, job) for name, wf in WORKFLOWS.items() for job_id, job in wf["jobs"].items()]


def test_release_secrets_are_read_only_in_protected_environments():
    protected: dict[str, set[str]] = {}
    for name, wf in WORKFLOWS.items():
        outside_jobs = secrets_in({k: v for k, v in wf.items() if k != "jobs"})
        assert not outside_jobs, f"{name}: workflow-level secrets reach every job: {outside_jobs}"
    for name, job_id, job in jobs():
        used = set(secrets_in(job))
        env = environment(job)
        if env is None and "uses" in job:
            # A reusable workflow's caller (retrain.yml) runs no step: the secrets it passes by name reach only the
            # called workflow's jobs, each in a protected environment, which gives them that environment's values.
            callee = WORKFLOWS[job["uses"].removeprefix("./.github/workflows/")]
            assert "steps" not in job and "*" not in used, f"{name}/{job_id} hands on every secret"
            assert all(environment(called) in PROTECTED_ENVIRONMENTS for called in callee["jobs"].values()), job_id
            continue
        if env is None:
            assert used <= READ_ONLY_SECRETS, f"{name}/{job_id} (no environment) reads {used - READ_ONLY_SECRETS}"
        else:
            assert env in PROTECTED_ENVIRONMENTS, f"{name}/{job_id}: environment {env!r} has no documented policy"
            assert "*" not in used, f"{name}/{job_id} hands on every secret"
            protected.setdefault(f"{name}/{job_id}", set()).update(used)
    # not vacuous: the jobs that sign and move aliases are the environment jobs, and they do read the key
    assert set(protected) == {"deploy.yml/candidate", "deploy.yml/promote", "rollback.yml/rollback"}
    for job, used in protected.items():
        assert "RELEASE_SIGNING_KEY" in used and "MLFLOW_TRACKING_PASSWORD" in used, job
    assert {"KUBECONFIG", "REGISTRY_PASSWORD"} <= set().union(*protected.values())
    for action, definition in ACTIONS.items():
        assert not secrets_in(definition), f"composite action {action} reads secrets"


def test_pull_request_workflows_see_no_release_secret():
    for name, wf in WORKFLOWS.items():
        assert "pull_request_target" not in triggers(wf), f"{name} runs a fork's code with the base's secrets"
    pr_workflows = [name for name, wf in WORKFLOWS.items() if "pull_request" in triggers(wf)]
    assert sorted(pr_workflows) == ["ci.yml", "pr-checks.yml"]
    for name in pr_workflows:
        for job_id, job in WORKFLOWS[name]["jobs"].items():
            assert environment(job) is None, f"{name}/{job_id}"
            assert not set(secrets_in(job)) & RELEASE_SECRETS, f"{name}/{job_id}"
            assert set(secrets_in(job)) <= READ_ONLY_SECRETS, f"{name}/{job_id}"


def test_every_environment_job_starts_with_the_branch_guard():
    guarded = [(f"{name}/{job_id}", job) for name, job_id, job in jobs() if environment(job) is not None]
    assert len(guarded) == 3
    first = [job["steps"][0] for _, job in guarded]
    for (where, _), step in zip(guarded, first, strict=True):
        assert step.get("name") == GUARD_NAME, f"{where}: the first step is not the branch guard"
        assert step == first[0], f"{where}: its guard differs from the others"
    assert first[0]["env"] == {
        "REF": "${{ github.ref }}",
        # a scheduled run's payload has no repository; GitHub runs schedules on the default branch only
        "DEFAULT_BRANCH": "${{ github.event.repository.default_branch || "
        "(github.event_name == 'schedule' && github.ref_name || '') }}",
    }
    for name, job_id, job in jobs():
        if environment(job) is None:
            assert all(step.get("name") != GUARD_NAME for step in job.get("steps", [])), f"{name}/{job_id}"


def guard_script() -> str:
    return WORKFLOWS["deploy.yml"]["jobs"]["candidate"]["steps"][0]["run"]


@pytest.mark.parametrize(
    ("ref", "default", "passes"),
    [
        ("refs/heads/main", "main", True),
        ("refs/heads/trunk", "trunk", True),
        ("refs/heads/feature", "main", False),
        ("refs/heads/main-evil", "main", False),
        ("refs/heads/x/refs/heads/main", "main", False),
        ("refs/pull/7/merge", "main", False),
        ("refs/tags/main", "main", False),
        ("refs/heads/main", "", False),  # an event without its repository: refuse, never guess
        ("", "", False),
    ],
)
def test_the_branch_guard_lets_only_the_default_branch_through(ref, default, passes):
    bash = shutil.which("bash")
    assert bash, "bash is needed (GitHub's runners run `run:` steps with it)"
    result = subprocess.run(
        [bash, "-e", "-c", guard_script()], env={"REF": ref, "DEFAULT_BRANCH": default},
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert result.returncode == (0 if passes else 1), result.stdout + result.stderr
    if not passes:
        assert result.stdout.startswith("::error::this job holds the release signing key and write credentials")
        assert f"only on the default branch ({default or 'unknown'}), not on {ref}" in result.stdout
    else:
        assert result.stdout == ""


def concurrency_groups(workflow: dict) -> list[tuple[str, object]]:
    """(group, cancel-in-progress) of the workflow and of each of its jobs."""
    found = []
    for holder in [workflow, *workflow["jobs"].values()]:
        concurrency = holder.get("concurrency")
        if isinstance(concurrency, str):
            found.append((concurrency, False))
        elif concurrency:
            found.append((concurrency["group"], concurrency.get("cancel-in-progress", False)))
    return found


def literal_prefix(group: str) -> str:
    """What every evaluation of `group` starts with, as GitHub compares groups (case-insensitively)."""
    return group.split("${{")[0].lower()


def test_no_concurrency_group_is_shared_between_workflows():
    # Two groups can evaluate equal only if one literal prefix starts the other.
    groups = {name: concurrency_groups(wf) for name, wf in WORKFLOWS.items()}
    for a, a_groups in groups.items():
        for b, b_groups in groups.items():
            if a >= b:
                continue
            for group_a, _ in a_groups:
                for group_b, _ in b_groups:
                    pa, pb = literal_prefix(group_a), literal_prefix(group_b)
                    assert not (pa.startswith(pb) or pb.startswith(pa)), f"{a} {group_a!r} may meet {b} {group_b!r}"
    # the deploy and rollback groups never cancel a running alias move, and rollbacks queue per version
    for name in ("deploy.yml", "rollback.yml"):
        assert groups[name] and all(cancel is False for _, cancel in groups[name]), name
    [(rollback_group, _)] = groups["rollback.yml"]
    assert literal_prefix(rollback_group) == "rollback-production-"
    assert "github.event.client_payload.version" in rollback_group and "'manual'" in rollback_group


def test_write_permissions_are_exactly_the_needed_ones():
    writes = {}
    for name, job_id, job in jobs():
        assert "permissions" in job, f"{name}/{job_id} inherits the repository's default token permissions"
        writes[f"{name}/{job_id}"] = sorted(scope for scope, level in job["permissions"].items() if level == "write")
    assert {job: scopes for job, scopes in writes.items() if scopes} == {
        "deploy.yml/candidate": ["packages"],  # pushes the smoke-tested image
        "retrain.yml/release": ["packages"],  # the most deploy.yml's jobs may take, called by the retrain
        "pr-checks.yml/gate": ["pull-requests"],  # the gate report's one comment
    }


def test_zizmor_finds_only_read_only_secrets_outside_an_environment():
    zizmor = shutil.which("zizmor", path=str(Path(sys.executable).parent))
    assert zizmor, "zizmor is not installed in the virtualenv (requirements/dev.txt)"
    result = subprocess.run(
        [zizmor, "--offline", "--persona", "auditor", "--format", "json", ".github"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    findings = json.loads(result.stdout)
    flagged = {
        location["concrete"]["feature"]
        for finding in findings
        if finding["ident"] == "secrets-outside-env"
        for location in finding["locations"]
        if location["symbolic"]["kind"] == "Primary"
    }
    # the audit exists in this zizmor and runs: PR checks do read the read-only secrets outside an environment
    assert {"secrets.MLFLOW_READ_USERNAME", "secrets.MLFLOW_READ_PASSWORD"} <= flagged
    assert flagged <= {f"secrets.{name}" for name in READ_ONLY_SECRETS}, flagged
