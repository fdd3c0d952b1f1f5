"""The Kubernetes deploy after production moved: the overlay pinned to the version's image, applied with KUBECONFIG."""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion

from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core import kustomize
from pipeline.core.config import DeployParams
from pipeline.core.errors import InfrastructureError
from pipeline.runtime import kubernetes
from pipeline.stages.context import Context


def plan_pin(deploy: DeployParams, image: str) -> kubernetes.OverlayPin | None:
    """The overlay pinned to `image` (REF@DIGEST), worked out before anything moves; None without image or overlay.

    A missing or malformed overlay is exit 2 here, while nothing has moved.
    """
    if not image or deploy.overlay is None:
        return None
    return kubernetes.plan_pin(deploy.overlay, deploy.image_name, image, deploy.deployment, deploy.rollout_timeout_s)


def deploy_version(ctx: Context, mv: ModelVersion, pin: kubernetes.OverlayPin | None) -> None:
    """Pin the overlay to the image smoke tested with `mv`; with KUBECONFIG apply it and wait for the rollout.

    Without KUBECONFIG the overlay is pinned and the commands that deploy it are
    printed (stderr and job summary). A kubectl failure is exit 3 saying that
    production's alias already moved and how to finish by hand.
    """
    deploy, alias = ctx.params.deploy, ctx.registry.production_alias
    if deploy.overlay is None:
        say("  deploy.overlay is null: no Kubernetes overlay to pin")
        return
    if pin is None:
        note = (
            f"version {mv.version} has no published image (image.ref/image.digest): {deploy.overlay} left as it is, "
            "nothing applied; the running pods follow the alias with the image they have"
        )
        say(f"  {note}")
        github.write_summary(f"**Kubernetes:** {note}.", ctx.env.github)
        return
    lines = kustomize.shell_lines(pin.commands)
    entry = kustomize.images_entry(deploy.image_name, pin.image)
    with stage("deploy", f"{deploy.image_name} {pin.image.reference} to {pin.overlay}"):
        kubernetes.write_pin(pin)
        say(f"  {pin.path}: {deploy.image_name} pinned to {pin.image.reference} (smoke tested with {mv.version})")
        pinned = (
            f"**Kubernetes:** `{pin.path}` pins `{deploy.image_name}` to `{pin.image.reference}`, the image smoke "
            f"tested with version {mv.version}:\n\n```yaml\n{entry}```"
        )
        if not ctx.env.kubeconfig:
            say("  no KUBECONFIG: nothing applied. To deploy it, from a checkout with that overlay:")
            say("    " + lines.replace("\n", "\n    "))
            github.write_summary(
                f"{pinned}\n\nNo `KUBECONFIG`: nothing applied. To deploy it, from a checkout whose overlay has "
                f"that entry:\n\n```sh\n{lines}\n```",
                ctx.env.github,
            )
            return
        try:
            kubernetes.apply(pin, deploy.rollout_timeout_s)
        except InfrastructureError as exc:
            github.write_summary(
                f"{pinned}\n\n**Not deployed:** {exc}. `@{alias}` already points at {mv.version}; "
                f"finish by hand from a checkout whose overlay has that entry:\n\n```sh\n{lines}\n```",
                ctx.env.github,
            )
            raise InfrastructureError(
                f"{exc}; @{alias} already moved to {mv.version} (the pods follow it with the image they have): "
                f"finish by hand with {pin.path} pinned to {pin.image.reference}: {lines.replace(chr(10), ' && ')}"
            ) from None
        github.write_summary(f"{pinned}\n\nApplied and rolled out:\n\n```sh\n{lines}\n```", ctx.env.github)
