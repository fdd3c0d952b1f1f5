"""GitHub glue: outputs, summaries and the single, updated PR comment.

GitHub's API cannot run here, so a small in-memory stand-in (httpx.MockTransport)
plays the comments endpoints; the code under test is the real client logic.
"""

import json

import httpx
import pytest

from pipeline.ci import github

MARKER = "<!-- gate-report -->"


class FakeComments:
    def __init__(self, comments: list[dict], status: int = 200):
        self.comments, self.status, self.calls = comments, status, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        if self.status != 200:
            return httpx.Response(self.status, json={"message": "Resource not accessible by integration"})
        if request.method == "GET":
            return httpx.Response(200, json=self.comments)
        body = json.loads(request.content)["body"]
        if request.method == "PATCH":
            comment_id = int(request.url.path.rsplit("/", 1)[1])
            next(c for c in self.comments if c["id"] == comment_id)["body"] = body
            return httpx.Response(200, json={"id": comment_id})
        self.comments.append({"id": 99, "body": body})
        return httpx.Response(201, json={"id": 99})


@pytest.fixture
def pull_request(tmp_path, monkeypatch):
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7}}))
    monkeypatch.setenv("GITHUB_EVENT_PATH", str(event))
    monkeypatch.setenv("GITHUB_TOKEN", "t")
    monkeypatch.setenv("GITHUB_REPOSITORY", "team/model")


def test_first_report_creates_the_comment_and_later_ones_update_it(pull_request):
    api = FakeComments([{"id": 1, "body": "looks good"}])
    assert github.upsert_pr_comment(f"{MARKER}\nfirst", MARKER, httpx.MockTransport(api)) == "created comment 99"
    assert github.upsert_pr_comment(f"{MARKER}\nsecond", MARKER, httpx.MockTransport(api)) == "updated comment 99"
    assert [c["body"] for c in api.comments] == ["looks good", f"{MARKER}\nsecond"]
    assert ("PATCH", "/repos/team/model/issues/comments/99") in api.calls


def test_a_read_only_token_from_a_fork_is_not_an_error(pull_request):
    api = FakeComments([], status=403)
    assert github.upsert_pr_comment(MARKER, MARKER, httpx.MockTransport(api)) == "skipped: 403"


def test_outside_a_pull_request_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("GITHUB_EVENT_PATH", raising=False)
    assert github.upsert_pr_comment(MARKER, MARKER).startswith("skipped")


def parse_file_command(text: str) -> dict[str, str]:
    """What the Actions runner reads from $GITHUB_ENV / $GITHUB_OUTPUT (both forms it accepts)."""
    lines, values = text.split("\n"), {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            values[name] = "\n".join(lines[i + 1 : end])
            i = end + 1
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
            i += 1
        else:
            i += 1
    return values


def test_outputs_summary_and_env_files(tmp_path, monkeypatch):
    for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_ENV"):
        monkeypatch.setenv(name, str(tmp_path / name))
    github.write_outputs(run_id="abc", version="3")
    github.write_summary("## report")
    github.export_env("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert parse_file_command((tmp_path / "GITHUB_OUTPUT").read_text()) == {"run_id": "abc", "version": "3"}
    assert (tmp_path / "GITHUB_STEP_SUMMARY").read_text() == "## report\n\n"
    env = parse_file_command((tmp_path / "GITHUB_ENV").read_text())
    assert env == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}


def test_a_newline_in_a_value_cannot_inject_a_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ENV", str(tmp_path / "env"))
    github.export_env("MLFLOW_TRACKING_URI", "http://x\nLD_PRELOAD=/tmp/evil.so")
    assert parse_file_command((tmp_path / "env").read_text()) == {
        "MLFLOW_TRACKING_URI": "http://x\nLD_PRELOAD=/tmp/evil.so"
    }


def test_summaries_and_outputs_never_carry_a_password(tmp_path, monkeypatch):
    for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"):
        monkeypatch.setenv(name, str(tmp_path / name))
    github.write_summary("server http://alice:s3cret@mlflow.internal:5000 is down")
    github.write_outputs(uri="https://bob:hunter2@host/")
    written = (tmp_path / "GITHUB_STEP_SUMMARY").read_text() + (tmp_path / "GITHUB_OUTPUT").read_text()
    assert "s3cret" not in written and "hunter2" not in written
    assert "http://***@mlflow.internal:5000" in written


def test_nothing_is_written_outside_actions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_ENV"):
        monkeypatch.delenv(name, raising=False)
    github.write_outputs(run_id="abc")
    github.write_summary("x")
    github.export_env("A", "b")
    assert list(tmp_path.iterdir()) == []  # no stray GITHUB_* file in the working directory
