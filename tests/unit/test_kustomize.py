"""The overlay edit promote and rollback make: pin the API image to the published digest, nothing else."""

import pytest
import yaml

from pipeline.core import kustomize
from pipeline.core.kustomize import PinnedImage

from ..conftest import ROOT

DIGEST = "sha256:" + "ab" * 32
PRODUCTION = ROOT / "deploy" / "k8s" / "overlays" / "production" / "kustomization.yaml"


@pytest.mark.parametrize(
    ("published", "repository"),
    [
        (f"ghcr.io/org/repo:0123abc@{DIGEST}", "ghcr.io/org/repo"),
        (f"127.0.0.1:5000/churn-api:0123abc@{DIGEST}", "127.0.0.1:5000/churn-api"),  # a port is not a tag
        (f"127.0.0.1:5000/churn-api@{DIGEST}", "127.0.0.1:5000/churn-api"),
        (f"churn-api:v1@{DIGEST}", "churn-api"),
    ],
)
def test_published_ref_gives_the_repository_and_digest(published, repository):
    assert kustomize.parse_published(published) == PinnedImage(repository, DIGEST)


@pytest.mark.parametrize(
    "published", ["", "ghcr.io/org/repo:tag", "ghcr.io/org/repo@sha256:short", f"@{DIGEST}", f"a b@{DIGEST}"]
)
def test_a_malformed_published_ref_is_refused(published):
    with pytest.raises(ValueError, match="is not REF@sha256:DIGEST"):
        kustomize.parse_published(published)


def test_pinning_the_committed_overlay_changes_only_the_image_lines():
    # given the production overlay as committed (comments, block-scalar patches, other lists)
    text = PRODUCTION.read_text()
    image = PinnedImage("127.0.0.1:5000/churn-api", DIGEST)
    # when it is pinned
    pinned = kustomize.pin_image(text, "churn-api", image)
    # then exactly the newName and digest lines differ, comments and everything else kept byte for byte
    before, after = text.splitlines(), pinned.splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [b.strip() for _, b in changed] == [f"newName: {image.repository}", f"digest: {DIGEST}"]
    assert yaml.safe_load(pinned)["images"] == [{"name": "churn-api", "newName": image.repository, "digest": DIGEST}]
    assert kustomize.pinned_image(pinned, "churn-api") == image
    # and pinning again is a no-op
    assert kustomize.pin_image(pinned, "churn-api", image) == pinned


def test_pinning_drops_a_tag_keeps_other_images_and_adds_a_missing_entry():
    text = (
        "# an overlay\nnamespace: ns\nimages:\n  - name: sidecar  # keep me\n    newTag: '1.2'\n"
        "  - name: churn-api\n    newName: old/name\n    newTag: latest\n"
    )
    pinned = yaml.safe_load(kustomize.pin_image(text, "churn-api", PinnedImage("new/name", DIGEST)))
    assert pinned["images"] == [
        {"name": "sidecar", "newTag": "1.2"},
        {"name": "churn-api", "newName": "new/name", "digest": DIGEST},
    ]
    assert "# keep me" in kustomize.pin_image(text, "churn-api", PinnedImage("new/name", DIGEST))
    added = kustomize.pin_image("resources: [../../base]\n", "churn-api", PinnedImage("new/name", DIGEST))
    assert yaml.safe_load(added)["images"] == [{"name": "churn-api", "newName": "new/name", "digest": DIGEST}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list\n", "not a kustomization"),
        ("images: {name: churn-api}\n", "`images` is not a list"),
        ("images:\n  - name: churn-api\n  - name: churn-api\n", "names 'churn-api' 2 times"),
        ("images: [\n", "not valid YAML"),
    ],
)
def test_an_overlay_that_cannot_be_pinned_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        kustomize.pin_image(text, "churn-api", PinnedImage("new/name", DIGEST))


def test_deploy_commands_apply_the_overlay_and_wait_for_the_deployment_in_its_namespace():
    assert kustomize.namespace(PRODUCTION.read_text()) == "churn-production"
    commands = kustomize.deploy_commands("deploy/k8s/overlays/production", "churn-api", "churn-production", 300)
    assert kustomize.shell_lines(commands) == (
        "kubectl apply -k deploy/k8s/overlays/production\n"
        "kubectl rollout status deployment/churn-api -n churn-production --timeout=300s"
    )
    assert kustomize.deploy_commands("my overlay", "api", None, 60) == [
        ["kubectl", "apply", "-k", "my overlay"],
        ["kubectl", "rollout", "status", "deployment/api", "--timeout=60s"],
    ]
    assert kustomize.shell_lines(kustomize.deploy_commands("my overlay", "api", None, 60)).startswith(
        "kubectl apply -k 'my overlay'"
    )
