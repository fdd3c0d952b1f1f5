"""The Kubernetes side of an alias move: write the overlay's pinned image, then `kubectl apply` and wait.

The edit itself is pure (pipeline.core.kustomize); this reads and writes the
overlay's kustomization file (atomically, keeping its permissions) and runs
kubectl, which reads the cluster and credentials from KUBECONFIG.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.ci.progress import say
from pipeline.core import kustomize
from pipeline.core.errors import ConfigError, InfrastructureError
from pipeline.runtime.output_files import atomic_outputs


@dataclass(frozen=True)
class OverlayPin:
    """What pinning an overlay to an image changes: its file, the new text, and the commands that deploy it."""

    overlay: str  # as configured (deploy.overlay), what the printed commands name
    path: Path  # its kustomization file
    text: str  # the file's new text
    image: kustomize.PinnedImage
    commands: list[list[str]]

    @property
    def changed(self) -> bool:
        """Whether the file does not already pin this image."""
        return self.path.read_text() != self.text


def plan_pin(overlay: str, image_name: str, published: str, deployment: str, timeout_s: int) -> OverlayPin:
    """Read the overlay and work out its pinned text and the commands; ConfigError (exit 2) naming what is wrong.

    Nothing is written: promote and rollback plan before they move the alias, so
    a missing or malformed overlay stops them while nothing has moved.
    """
    folder = Path(overlay)
    path = next((folder / name for name in kustomize.KUSTOMIZATION_FILES if (folder / name).is_file()), None)
    if path is None:
        raise ConfigError(
            f"deploy.overlay {overlay}: no kustomization.yaml there (set deploy.overlay: null when production "
            "is not on Kubernetes)"
        )
    try:
        image = kustomize.parse_published(published)
        text = path.read_text()
        pinned = kustomize.pin_image(text, image_name, image)
        ns = kustomize.namespace(text)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"deploy.overlay {path}: cannot pin {image_name} to {published}: {exc}") from None
    return OverlayPin(overlay, path, pinned, image, kustomize.deploy_commands(overlay, deployment, ns, timeout_s))


def write_pin(pin: OverlayPin) -> None:
    """Write the overlay's new text (temp file, then rename: never half a file)."""
    if not pin.changed:
        return
    with atomic_outputs(pin.path) as staged:
        staged[pin.path].write_text(pin.text)


def apply(pin: OverlayPin, timeout_s: int) -> None:
    """Run the pin's kubectl commands in order; InfrastructureError (exit 3) naming the first that fails."""
    for command in pin.commands:
        if shutil.which(command[0]) is None:
            raise InfrastructureError(f"`{kustomize.shell_lines([command])}`: {command[0]} is not installed")
        say(f"  $ {kustomize.shell_lines([command])}")
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s + 60, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise InfrastructureError(
                f"`{kustomize.shell_lines([command])}` did not finish in {timeout_s + 60}s"
            ) from None
        output = (result.stdout + result.stderr).strip()
        for line in output.splitlines()[-20:]:
            say(f"    {line}")
        if result.returncode != 0:
            tail = " ".join(output.splitlines()[-3:])[-600:]
            raise InfrastructureError(
                f"`{kustomize.shell_lines([command])}` failed (exit {result.returncode}){': ' + tail if tail else ''}"
            )
