"""retrain.yml: the gated flow of deploy.yml, reused on a training set from the labelled log, with the least it needs.

The retrain path's gate step is run here for real (bash, a stand-in `python` that exits as the gate would):
a retrain the gate refuses ends green having changed nothing, a push's refused gate still fails its job.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.core import alerts

from .tools import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
UNCHANGED = "steps.gate.outputs.unchanged != 'true'"


def workflow(name: str) -> dict:
    """A workflow file, with PyYAML's `True` key (the bare word `on`) read back as "on"."""
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))
    return loaded


def test_retrain_runs_weekly_on_a_retrain_dispatch_and_by_hand() -> None:
    on = workflow("retrain.yml")["on"]
    assert set(on) == {"schedule", "repository_dispatch", "workflow_dispatch"}
    [schedule] = on["schedule"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert re.fullmatch(r"[0-9]{1,2}", hour), "at one hour of the day"
    assert (day, month) == ("*", "*") and re.fullmatch(r"[0-6]", weekday), "once a week"
    assert minute not in {"0", "*"}, "not on the hour, when GitHub's scheduler is busiest"
    # the relay's retrain dispatches are the only event type it listens for; rollbacks go to rollback.yml only
    assert on["repository_dispatch"] == {"types": [alerts.RETRAIN]}
    assert workflow("rollback.yml")["on"]["repository_dispatch"] == {"types": [alerts.EVENT_TYPE]}


def test_retrain_reuses_deploy_and_grants_no_more_than_deploy_s_jobs_take() -> None:
    retrain, deploy = workflow("retrain.yml"), workflow("deploy.yml")
    assert retrain["permissions"] == {}
    release = retrain["jobs"]["release"]
    assert release["uses"] == "./.github/workflows/deploy.yml" and release["with"] == {"retrain": True}
    # each scope deploy.yml's jobs ask for, at the highest level any asks, and nothing else
    needed: dict[str, str] = {}
    for job in deploy["jobs"].values():
        for scope, level in job["permissions"].items():
            needed[scope] = "write" if "write" in (level, needed.get(scope)) else level
    assert release["permissions"] == needed == {"contents": "read", "packages": "write"}
    # each secret deploy.yml's jobs read, passed by its own name (GitHub then gives a job in an environment that
    # environment's value), and no other: never `secrets: inherit`
    read = set(re.findall(r"secrets\.([A-Z_]+)", (WORKFLOWS / "deploy.yml").read_text())) - {"GITHUB_TOKEN"}
    assert set(deploy["on"]["workflow_call"]["secrets"]) == read
    assert release["secrets"] == {name: f"${{{{ secrets.{name} }}}}" for name in read}
    assert all(declared == {"required": False} for declared in deploy["on"]["workflow_call"]["secrets"].values())
    # the other job says why, and reads no secret, checks out nothing, may do nothing with the token
    reason = retrain["jobs"]["reason"]
    assert reason["permissions"] == {} and "secrets" not in yaml.safe_dump(reason)
    assert all("uses" not in step for step in reason["steps"])
    # retrains queue one at a time in a group of their own; deploy.yml's jobs then queue with the pushes
    assert retrain["concurrency"] == {"group": "retrain-production", "cancel-in-progress": False}


def test_deploy_keeps_its_push_and_takes_a_retrain_input() -> None:
    deploy = workflow("deploy.yml")
    assert deploy["on"]["push"] == {"branches": ["main"]}
    retrain = deploy["on"]["workflow_call"]["inputs"]["retrain"]
    assert retrain["type"] == "boolean" and retrain["default"] is False
    steps = deploy["jobs"]["candidate"]["steps"]
    [training_set] = [step for step in steps if "training-set" in step.get("run", "")]
    assert training_set["if"] == "inputs.retrain"
    assert training_set["run"].startswith("python -m pipeline training-set --out data/retrain.csv --set ")
    assert training_set["env"]["PREDICTION_LOG_URI"] == "${{ vars.PREDICTION_LOG_URI }}"
    [train] = [step for step in steps if step.get("id") == "train"]
    assert train["env"]["DATA_PATH"] == "${{ inputs.retrain && 'data/retrain.csv' || '' }}"
    # every step after the gate that registers, builds, smokes, publishes or promotes is skipped once a
    # retrain's gate said no; the promote job too
    after = steps[[step.get("id") for step in steps].index("gate") + 1 :]
    acting = [step for step in after if re.search(r"pipeline (register|image|smoke|publish|promote)", step["run"])]
    assert len(acting) == 5
    assert all(UNCHANGED in step["if"] for step in acting), [step.get("if") for step in acting]
    assert "needs.candidate.outputs.unchanged != 'true'" in deploy["jobs"]["promote"]["if"]
    assert deploy["jobs"]["candidate"]["outputs"]["unchanged"] == "${{ steps.gate.outputs.unchanged }}"


def test_every_release_guard_lets_a_scheduled_run_through_on_the_branch_it_runs_on() -> None:
    """A schedule's payload has no repository: the guard takes the ref GitHub runs schedules on (the default)."""
    guards = [
        job["steps"][0]
        for name in ("deploy.yml", "rollback.yml")
        for job in workflow(name)["jobs"].values()
        if "environment" in job
    ]
    assert len(guards) == 3 and all(guard == guards[0] for guard in guards)
    assert guards[0]["env"]["DEFAULT_BRANCH"] == (
        "${{ github.event.repository.default_branch || (github.event_name == 'schedule' && github.ref_name || '') }}"
    )


def gate_step() -> dict:
    [step] = [s for s in workflow("deploy.yml")["jobs"]["candidate"]["steps"] if s.get("id") == "gate"]
    return step


def run_gate_step(tmp_path: Path, retrain: bool, gate_exit: int) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the gate step's script with a `python` that records its arguments and exits `gate_exit`."""
    bash = shutil.which("bash")
    assert bash, "bash is needed (GitHub's runners run `run:` steps with it)"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\nexit {gate_exit}\n')
    fake.chmod(0o755)
    files = {name: tmp_path / name for name in ("output", "summary")}
    for path in files.values():
        path.write_text("")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "RETRAIN": "true" if retrain else "false",
        "RUN_ID": "abc123",
        "GITHUB_OUTPUT": str(files["output"]),
        "GITHUB_STEP_SUMMARY": str(files["summary"]),
    }
    done = subprocess.run([bash, "-e", "-c", gate_step()["run"]], env=env, capture_output=True, text=True, timeout=10)
    seen = {name: path.read_text() for name, path in files.items()}
    seen["args"] = (tmp_path / "args").read_text().strip()
    return done, seen


@pytest.mark.parametrize("gate_exit", [0, 1, 2, 3])
def test_a_push_s_gate_is_the_gate_as_before(tmp_path: Path, gate_exit: int) -> None:
    # given a push (no retrain input), when the gate exits with a code, then the step exits with it, untouched
    done, seen = run_gate_step(tmp_path, retrain=False, gate_exit=gate_exit)
    assert done.returncode == gate_exit
    assert seen["args"] == "-m pipeline gate --run-id abc123"
    assert seen["output"] == seen["summary"] == ""


def test_a_retrain_that_does_not_beat_production_changes_nothing_and_says_so(tmp_path: Path) -> None:
    # given a retrain, when the gate (held to beating production) says no (exit 1)
    done, seen = run_gate_step(tmp_path, retrain=True, gate_exit=1)
    # then the step succeeds, tells the later steps to do nothing, and the job summary says why
    assert done.returncode == 0, done.stderr
    assert seen["args"] == (
        "-m pipeline gate --run-id abc123 --set gates.metrics.f1.max_drop=-0.001"
        " --set gates.recent_outcomes={rows: 500, min_rows: 200, max_drop: -0.001}"
    )
    assert seen["output"] == "unchanged=true\n"
    assert seen["summary"].startswith("### Retrain: production unchanged\n")
    assert "run `abc123`) did not beat production" in seen["summary"]
    assert "nothing was registered, smoke-tested, published or promoted" in seen["summary"]


@pytest.mark.parametrize(("gate_exit", "unchanged"), [(0, ""), (2, ""), (3, "")])
def test_a_retrain_that_beats_production_goes_on_and_a_broken_one_fails(
    tmp_path: Path, gate_exit: int, unchanged: str
) -> None:
    # given a retrain, when the gate passes (0), finds bad input (2) or the infrastructure fails (3): its exit code
    done, seen = run_gate_step(tmp_path, retrain=True, gate_exit=gate_exit)
    assert done.returncode == gate_exit
    assert seen["output"] == unchanged and seen["summary"] == ""


@pytest.mark.parametrize(
    ("event", "reason", "version", "code", "said"),
    [
        ("schedule", "", "", 0, "Asked for by the weekly schedule."),
        ("repository_dispatch", "ModelLiveQualityLow: `v7` **low**", "7", 0,
         "Asked for by an alert: ModelLiveQualityLow:  v7    low   (version 7)."),
        ("workflow_dispatch", "", "", 0, "Asked for by a person: no reason given."),
        ("repository_dispatch", "x", "7; rm -rf /", 2, ""),
        ("repository_dispatch", "x", "٣", 2, ""),
    ],
)  # fmt: skip
def test_the_reason_job_says_what_asked_in_plain_text_and_refuses_an_odd_version(
    tmp_path: Path, event: str, reason: str, version: str, code: int, said: str
) -> None:
    bash = shutil.which("bash")
    assert bash
    [step] = workflow("retrain.yml")["jobs"]["reason"]["steps"]
    summary = tmp_path / "summary"
    summary.write_text("")
    env = {"PATH": "/usr/bin:/bin", "EVENT": event, "REASON": reason, "VERSION": version,
           "GITHUB_STEP_SUMMARY": str(summary), "LC_ALL": "C.UTF-8"}  # fmt: skip
    done = subprocess.run([bash, "-e", "-c", step["run"]], env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == code, done.stdout + done.stderr
    if code:
        assert "client_payload.version must be a version number" in done.stdout and summary.read_text() == ""
    else:
        assert summary.read_text() == f"### Retrain\n\n{said} The release job below says what changed.\n"


def test_a_retrain_holds_out_of_its_training_set_the_newest_outcomes_its_gate_judges() -> None:
    # given deploy.yml's candidate job: the training-set step and the gate step
    steps = workflow("deploy.yml")["jobs"]["candidate"]["steps"]
    [training_set] = [s for s in steps if "training-set" in str(s.get("run"))]
    rule = '--set "gates.recent_outcomes={rows: 500, min_rows: 200, max_drop: -0.001}"'
    # then both set the same recent_outcomes rule: the rows judged are the rows held out
    assert training_set["run"].endswith(rule) and rule in gate_step()["run"]
    # and the gate reads the log only on a retrain: a push's gate gets no log credentials
    env = gate_step()["env"]
    assert env["AWS_SECRET_ACCESS_KEY"] == "${{ inputs.retrain && secrets.PREDICTION_LOG_SECRET_ACCESS_KEY || '' }}"
    assert env["PREDICTION_LOG_URI"] == "${{ inputs.retrain && vars.PREDICTION_LOG_URI || '' }}"
