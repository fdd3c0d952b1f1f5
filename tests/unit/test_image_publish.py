"""Publishing the tested image: where it goes, how its digest is read, how its record is signed."""

import pytest

from api.release import contract
from api.release.verdicts import image_refusal, image_verdict, load_verify_key
from pipeline.core.errors import ConfigError, InfrastructureError
from pipeline.core.release_keys import load_signing_key, new_key_pair, sign
from pipeline.runtime.image_publish import digest_from_push_output, image_repository, is_local_registry

DIGEST = "sha256:" + "ab" * 32


def test_the_repository_comes_from_the_flag_then_the_variable_then_github():
    env = {"IMAGE_REPOSITORY": "registry.example.com/ml/churn", "GITHUB_REPOSITORY": "Acme/Churn-Model"}
    assert image_repository("localhost:5000/churn-api", env) == "localhost:5000/churn-api"
    assert image_repository(None, env) == "registry.example.com/ml/churn"
    # GitHub owner and repository names may have capitals; image names may not
    assert image_repository(None, {"GITHUB_REPOSITORY": "Acme/Churn-Model"}) == "ghcr.io/acme/churn-model"


@pytest.mark.parametrize(
    "bad",
    [
        "churn-api",  # no registry host: would go to Docker Hub
        "team/churn-api",  # "team" is no host either
        "ghcr.io/Acme/churn",  # capitals
        "ghcr.io/acme/churn:latest",  # a tag, not a repository
        "ghcr.io/",
        "ghcr.io/acme//churn",
    ],
)
def test_a_repository_that_is_not_host_and_path_is_refused_by_name(bad):
    with pytest.raises(ConfigError, match="not HOST/PATH"):
        image_repository(bad, {})


def test_no_repository_at_all_says_what_to_set():
    with pytest.raises(ConfigError, match="IMAGE_REPOSITORY"):
        image_repository(None, {})


@pytest.mark.parametrize(
    ("host", "local"),
    [("localhost:5000", True), ("127.0.0.1:5055", True), ("localhost", True), ("ghcr.io", False),
     ("registry.example.com:5000", False), ("localhost.example.com", False)],
)  # fmt: skip
def test_only_registries_on_this_machine_are_pushed_to_without_tls(host, local):
    assert is_local_registry(host) is local


def test_docker_pushs_last_digest_line_is_the_manifest_digest():
    output = f"abc: Pushed\nlatest: digest: {DIGEST} size: 1789\n"
    assert digest_from_push_output(output) == DIGEST
    with pytest.raises(InfrastructureError, match="no manifest digest"):
        digest_from_push_output("denied: requested access to the resource is denied\n")


def published_tags(key) -> dict[str, str]:
    tags = {
        contract.ARTIFACT_DIGEST: "sha256:" + "11" * 32,
        contract.GIT_SHA: "c0ffee",
        contract.IMAGE_REF: "ghcr.io/acme/churn:c0ffee",
        contract.IMAGE_DIGEST: DIGEST,
    }
    tags[contract.IMAGE_SIGNATURE] = sign(key, image_verdict(tags, model="churn", version="3", run_id="r1"))
    return tags


def test_a_signed_image_record_is_accepted_and_any_change_to_it_is_refused():
    private, public = new_key_pair()
    key, verify = load_signing_key(private.decode()), load_verify_key(public.decode())
    tags = published_tags(key)
    assert image_refusal(tags, verify, model="churn", version="3", run_id="r1") is None
    for changed in (
        {contract.IMAGE_DIGEST: "sha256:" + "cd" * 32},  # another image swapped in by hand
        {contract.IMAGE_REF: "ghcr.io/evil/churn:c0ffee"},
        {contract.IMAGE_SIGNATURE: ""},
    ):
        assert "not signed by the release key" in image_refusal(
            {**tags, **changed}, verify, model="churn", version="3", run_id="r1"
        )
    # the same record is not valid for another version
    assert image_refusal(tags, verify, model="churn", version="4", run_id="r1") is not None


def test_no_published_image_or_no_verify_key_leaves_nothing_to_refuse():
    private, public = new_key_pair()
    tags = published_tags(load_signing_key(private.decode()))
    unpublished = {k: v for k, v in tags.items() if not k.startswith("image.")}
    assert image_refusal(unpublished, load_verify_key(public.decode()), model="churn", version="3", run_id="r1") is None
    assert image_refusal({**tags, contract.IMAGE_SIGNATURE: ""}, None, model="churn", version="3", run_id="r1") is None
