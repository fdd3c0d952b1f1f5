"""Promote and rollback pin the Kubernetes overlay to the image smoke tested with the version, and apply it.

No Kubernetes API server can run on this machine, so the apply path runs a
stand-in `kubectl` (a script on PATH that records its arguments and exits 0 or
1): the one place a fake is used. The overlay edit, the summary, the exit codes
and the alias moves are the real ones.
"""

import os
import shutil
import stat

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ..conftest import ROOT
from .candidate import restore_smoked_candidate
from .test_flow import production, register_candidate

pytestmark = pytest.mark.integration
MODEL = "churn-classifier"
OVERLAY = "deploy/k8s/overlays/production"
IMAGE_A = ("127.0.0.1:5000/churn-api:aaaa111", "sha256:" + "a" * 64)
IMAGE_B = ("127.0.0.1:5000/churn-api:bbbb222", "sha256:" + "b" * 64)
FAKE_KUBECTL = """#!/bin/sh
# Stand-in for kubectl (no API server here): records KUBECONFIG and argv, fails when told to.
printf '%s %s\\n' "$KUBECONFIG" "$*" >> "$FAKE_KUBECTL_LOG"
if [ "$1" = "$FAKE_KUBECTL_FAIL" ]; then
  echo 'error: deployment "churn-api" exceeded its progress deadline' >&2
  exit 1
fi
echo "kubectl $1 ok"
"""


def publish(version: str, image: tuple[str, str]) -> None:
    """Record a published image on a version as `publish` does (unsigned: no verify key in this test)."""
    client = MlflowClient()
    client.set_model_version_tag(MODEL, version, "image.ref", image[0])
    client.set_model_version_tag(MODEL, version, "image.digest", image[1])


def smoked_candidate(cli) -> str:
    run_id = register_candidate(cli)
    version = cli.status()["aliases"]["candidate"]
    assert cli("smoke", "--version", version) == 0, (run_id, cli.err)
    return version


def pinned(project) -> dict:
    [entry] = yaml.safe_load((project / OVERLAY / "kustomization.yaml").read_text())["images"]
    return entry


def test_production_moves_pin_the_overlay_and_apply_it_with_kubeconfig(
    project, cli, monkeypatch, tmp_path_factory, releases
):
    shutil.copytree(ROOT / "deploy" / "k8s", project / "deploy" / "k8s")
    committed = (project / OVERLAY / "kustomization.yaml").read_text()
    summary = project / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.delenv("KUBECONFIG", raising=False)

    # given version 3 promoted, never published as an image (nor were 1 and 2): nothing is pinned, the summary says so
    restore_smoked_candidate(releases, project)  # 1 and 2 released, 3 smoke-tested
    assert cli("promote", "--version", "3") == 0, cli.err
    assert "version 3 has no published image" in summary.read_text()
    assert (project / OVERLAY / "kustomization.yaml").read_text() == committed

    # when version 4, published as image A, is promoted without KUBECONFIG
    assert smoked_candidate(cli) == "4"
    publish("4", IMAGE_A)
    summary.write_text("")
    assert cli("promote", "--version", "4") == 0, cli.err
    # then the overlay pins the image by digest (comments kept) and the exact commands are printed, not run
    assert pinned(project) == {"name": "churn-api", "newName": "127.0.0.1:5000/churn-api", "digest": IMAGE_A[1]}
    assert "# The image `python -m pipeline publish` pushed" in (project / OVERLAY / "kustomization.yaml").read_text()
    commands = (
        f"kubectl apply -k {OVERLAY}\nkubectl rollout status deployment/churn-api -n churn-production --timeout=300s"
    )
    text = summary.read_text()
    assert "No `KUBECONFIG`: nothing applied" in text and f"```sh\n{commands}\n```" in text
    assert f"newName: 127.0.0.1:5000/churn-api\n    digest: {IMAGE_A[1]}" in text
    assert "no KUBECONFIG: nothing applied" in cli.err and f"kubectl apply -k {OVERLAY}" in cli.err

    # a version whose overlay cannot be pinned is not promoted: nothing moves (exit 2)
    assert smoked_candidate(cli) == "5"
    publish("5", IMAGE_B)
    assert cli("promote", "--version", "5", "--set", "deploy.overlay=nowhere") == 2
    assert "deploy.overlay nowhere: no kustomization.yaml there" in cli.err
    assert production(cli) == "4"

    # with KUBECONFIG (a stand-in kubectl on PATH), promote applies the overlay and waits for the rollout
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "kubectl").write_text(FAKE_KUBECTL)
    (bin_dir / "kubectl").chmod(stat.S_IRWXU)
    log = bin_dir / "kubectl.log"
    kubeconfig = bin_dir / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(log))
    monkeypatch.setenv("FAKE_KUBECTL_FAIL", "none")
    summary.write_text("")
    assert cli("promote", "--version", "5") == 0, cli.err
    assert production(cli) == "5" and pinned(project)["digest"] == IMAGE_B[1]
    assert log.read_text().splitlines() == [
        f"{kubeconfig} apply -k {OVERLAY}",
        f"{kubeconfig} rollout status deployment/churn-api -n churn-production --timeout=300s",
    ]
    assert "Applied and rolled out" in summary.read_text()

    # an alert-driven rollback of a version production no longer serves does nothing (exit 0)
    log.write_text("")
    assert cli("rollback", "--reason", "ChurnApiHigh5xxRatio: v4", "--if-serving", "4") == 0
    assert "serves 5, not 4: production already moved; nothing to do" in cli.err
    assert production(cli) == "5" and log.read_text() == ""

    # a rollout that fails after the alias moved: exit 3, saying so and how to finish by hand
    monkeypatch.setenv("FAKE_KUBECTL_FAIL", "rollout")
    assert cli("rollback", "--reason", "ChurnApiHigh5xxRatio: v5", "--if-serving", "5") == 3
    [error] = [line for line in cli.err.splitlines() if line.startswith("error:")]
    assert production(cli) == "4" and pinned(project)["digest"] == IMAGE_A[1]
    assert "`kubectl rollout status deployment/churn-api -n churn-production --timeout=300s` failed (exit 1)" in error
    assert "exceeded its progress deadline" in error and "@production already moved to 4" in error
    assert f"finish by hand with {OVERLAY}/kustomization.yaml pinned to 127.0.0.1:5000/churn-api@{IMAGE_A[1]}" in error
    assert f"kubectl apply -k {OVERLAY} && kubectl rollout status" in error
    assert "**Not deployed:**" in summary.read_text()
    # the same alert delivered again finds production moved: nothing more happens
    assert cli("rollback", "--reason", "ChurnApiHigh5xxRatio: v5", "--if-serving", "5") == 0
    assert production(cli) == "4"

    # a version with no published image: said, nothing applied, the overlay left as it was
    log.write_text("")
    assert cli("rollback", "--to", "1", "--reason", "back to the first") == 0
    assert "version 1 has no published image" in cli.err and log.read_text() == ""
    assert pinned(project)["digest"] == IMAGE_A[1]
    # deploy.overlay: null is a production that is not on Kubernetes
    assert cli("rollback", "--to", "5", "--reason", "again", "--set", "deploy.overlay=null") == 0
    assert "deploy.overlay is null" in cli.err and log.read_text() == ""
    assert cli("rollback", "--reason", "x", "--if-serving", "three") == 2
    assert "--if-serving expects a version number" in cli.err
