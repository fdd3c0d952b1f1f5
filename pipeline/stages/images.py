"""image and publish: the API image built, and pushed only as the exact image smoke tested."""

from __future__ import annotations

from api.release import contract
from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.ci.provenance import git_sha
from pipeline.core.config import Params
from pipeline.core.environment import PipelineEnv
from pipeline.core.errors import CheckFailed, ConfigError
from pipeline.runtime import container
from pipeline.stages.context import Context
from pipeline.store import model_versions


def image_stage(tag: str | None, base_image: str | None) -> str:
    """Build the API image; returns its tag."""
    env = PipelineEnv.read()
    sha = git_sha()
    tag = tag or f"churn-api:{sha[:12] if sha != 'unknown' else 'dev'}"
    with stage("image", f"building {tag}"):
        container.build_image(tag, sha, base_image)
    github.write_outputs(env.github, image=tag)
    github.write_summary(f"Built API image `{tag}` at commit `{sha[:12]}`.", env.github)
    return tag


def publish_stage(params: Params, version: str, image: str, repository: str | None) -> str:
    """Push the image smoke tested for `version`, tagged with the git sha; record REF and DIGEST on the version.

    Only the image whose ID smoke recorded is pushed, and only for a version
    that may be released (the release check: gate and smoke passed, artifact
    unchanged, verdicts signed when a key is set). Returns REF@DIGEST.
    """
    from pipeline.runtime.image_publish import image_repository, push

    env = PipelineEnv.read()
    repository = image_repository(repository, env.publish_vars())
    sha = git_sha()
    if sha == "unknown":
        raise ConfigError("publish tags the image with the git sha, and there is none (no GITHUB_SHA, no git HEAD)")
    ctx = Context.open(params, env)
    mv = ctx.version(version)
    ref = f"{repository}:{sha}"
    with stage("publish", f"version {version}'s smoke-tested image {image} as {ref}"):
        _, refusal = ctx.release_refusal(mv)
        if refusal:
            raise CheckFailed(f"version {version} may not be released ({refusal}); nothing published")
        smoked = mv.tags.get(contract.SMOKE_IMAGE_DIGEST)
        if not smoked:
            raise CheckFailed(
                f"version {version} was not smoke-tested as an image (`smoke --image`); nothing published"
            )
        local = container.image_digest(image)
        if local != smoked:
            raise CheckFailed(
                f"image {image} ({local[:19]}…) is not the image smoke tested for version {version} "
                f"({smoked[:19]}…); nothing published"
            )
        digest = push(container.find_engine(), image, ref, env.publish_vars())
        model_versions.record_image(ctx.client, ctx.model, mv, ref, digest, ctx.signing_key)
        say(f"  pushed {ref}\n  digest {digest}")
    published = f"{ref}@{digest}"
    github.write_outputs(env.github, image_ref=ref, image_digest=digest)
    github.write_summary(f"Published version **{version}**'s smoke-tested image: `{published}`.", env.github)
    return published
