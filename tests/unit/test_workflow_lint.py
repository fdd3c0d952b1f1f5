"""The workflows and the Dockerfile pass the linters a reviewer would run: zizmor offline, actionlint, hadolint."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed in the virtualenv (requirements/dev.txt)")
    return path


@pytest.mark.parametrize(
    "command",
    [["zizmor", "--offline", ".github"], ["actionlint"], ["hadolint", "Dockerfile"]],
    ids=["zizmor", "actionlint", "hadolint"],
)
def test_linter_reports_nothing(command):
    result = subprocess.run([tool(command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_by_full_commit_sha_with_its_version():
    uses = []
    for path in [*WORKFLOWS, *ROOT.glob(".github/actions/*/action.yml")]:
        uses += [(path.name, line.strip()) for line in path.read_text().splitlines() if "uses:" in line]
    remote = [(name, line) for name, line in uses if "uses: ./" not in line]
    assert remote, "no remote action found: the check would pass vacuously"
    for name, line in remote:
        assert re.fullmatch(
            r"- uses: [\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+(\.\d+)*", line.lstrip("- ").join(["- ", ""])
        ), (
            name,
            line,
        )


def test_workflows_grant_nothing_by_default_and_never_persist_credentials():
    for path in WORKFLOWS:
        text = path.read_text()
        assert re.search(r"^permissions: \{\}$", text, re.M), f"{path.name}: no workflow-level `permissions: {{}}`"
        checkouts = text.count("actions/checkout@")
        assert text.count("persist-credentials: false") == checkouts, f"{path.name}: a checkout keeps credentials"
