"""Pin a kustomize overlay's image to a published digest, and the kubectl commands that deploy it (pure).

kubectl has no `kustomize edit` and the kustomize binary is not needed: the
overlay's kustomization.yaml is read and written as a YAML round trip
(ruamel.yaml keeps its comments, key order and block scalars), and only the
`images:` entry of the API's image changes.
"""

from __future__ import annotations

import io
import re
import shlex
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# The folder kustomize reads, with the file names it accepts (the first found wins, as in kustomize).
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


@dataclass(frozen=True)
class PinnedImage:
    """An image by digest, as kustomize's `images:` names it: `newName` (the repository) and `digest`."""

    repository: str
    digest: str

    @property
    def reference(self) -> str:
        """`REPOSITORY@DIGEST`, what the rendered Deployment's container runs."""
        return f"{self.repository}@{self.digest}"


def parse_published(published: str) -> PinnedImage:
    """The repository and digest of a published `REF@DIGEST` (REF's tag dropped: the digest names the image).

    ValueError when it is not `NAME[:TAG]@sha256:<64 hex>`.
    """
    ref, sep, digest = published.rpartition("@")
    if not sep or not ref or not DIGEST.match(digest):
        raise ValueError(f"{published!r} is not REF@sha256:DIGEST")
    head, slash, last = ref.rpartition("/")
    repository = head + slash + last.split(":", 1)[0]  # a port (host:5000/...) is before the last slash
    if not last.split(":", 1)[0] or any(c.isspace() for c in repository):
        raise ValueError(f"{published!r} is not REF@sha256:DIGEST")
    return PinnedImage(repository, digest)


def _yaml() -> YAML:
    yaml = YAML()  # round trip
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line
    yaml.indent(mapping=2, sequence=4, offset=2)  # `key:\n  - item`, as the overlays are written
    return yaml


def _load(text: str) -> CommentedMap:
    try:
        document = _yaml().load(text)
    except YAMLError as exc:
        raise ValueError(f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, CommentedMap):
        raise ValueError("not a kustomization (a YAML mapping)")
    return document


def pin_image(text: str, image_name: str, image: PinnedImage) -> str:
    """The kustomization `text` with its `images:` entry `image_name` set to `image` (added when missing).

    `newName` and `digest` are set, a `newTag` is dropped (a digest and a tag
    would disagree about what runs); other entries, keys and comments stay as
    they were. ValueError when `text` is not a kustomization whose `images` is a
    list naming `image_name` at most once.
    """
    document = _load(text)
    images = document.get("images")
    if images is None:
        images = document["images"] = CommentedSeq()
    if not isinstance(images, list):
        raise ValueError("`images` is not a list")
    entries = [entry for entry in images if isinstance(entry, dict) and entry.get("name") == image_name]
    if len(entries) > 1:
        raise ValueError(f"`images` names {image_name!r} {len(entries)} times")
    if entries:
        entry: Any = entries[0]
        entry.pop("newTag", None)
        entry["newName"] = image.repository
        entry["digest"] = image.digest
    else:
        images.append(CommentedMap([("name", image_name), ("newName", image.repository), ("digest", image.digest)]))
    out = io.StringIO()
    _yaml().dump(document, out)
    return out.getvalue()


def pinned_image(text: str, image_name: str) -> PinnedImage | None:
    """The image the kustomization pins `image_name` to (newName, else the name, and digest); None if no digest."""
    images = _load(text).get("images") or []
    for entry in images if isinstance(images, list) else []:
        if isinstance(entry, dict) and entry.get("name") == image_name and entry.get("digest"):
            return PinnedImage(str(entry.get("newName") or image_name), str(entry["digest"]))
    return None


def namespace(text: str) -> str | None:
    """The namespace the kustomization puts its objects in, if it sets one."""
    value = _load(text).get("namespace")
    return str(value) if value else None


def images_entry(image_name: str, image: PinnedImage) -> str:
    """The `images:` entry as YAML, for a person to write into an overlay by hand."""
    return f"images:\n  - name: {image_name}\n    newName: {image.repository}\n    digest: {image.digest}\n"


def deploy_commands(overlay: str, deployment: str, ns: str | None, timeout_s: int) -> list[list[str]]:
    """`kubectl apply -k OVERLAY`, then `kubectl rollout status` of the Deployment until it is rolled out."""
    where = ["-n", ns] if ns else []
    return [
        ["kubectl", "apply", "-k", overlay],
        ["kubectl", "rollout", "status", f"deployment/{deployment}", *where, f"--timeout={timeout_s}s"],
    ]


def shell_lines(commands: list[list[str]]) -> str:
    """The commands as shell lines, quoted so they can be pasted."""
    return "\n".join(shlex.join(command) for command in commands)
