"""Publish the smoke-tested image: push it to IMAGE_REPOSITORY, tagged with the git sha; return its digest.

The digest is the registry's manifest digest (`sha256:…`), the one a
deployment pulls by (`REPOSITORY@sha256:…`). Registry credentials come from
REGISTRY_USERNAME / REGISTRY_PASSWORD and go to the engine on stdin, into a
throwaway auth file: never on a command line, never left on the runner.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from pipeline.core.errors import ConfigError, InfrastructureError
from pipeline.runtime.container import Engine

REPOSITORY_VAR = "IMAGE_REPOSITORY"
USERNAME_VAR, PASSWORD_VAR = "REGISTRY_USERNAME", "REGISTRY_PASSWORD"
# host[:port]/path, lower case, as the distribution reference grammar allows.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(
    rf"^(?P<host>(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?)/(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)$"
)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Registries docker itself talks to over plain HTTP (docker's default insecure range).
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def image_repository(explicit: str | None, env: dict[str, str]) -> str:
    """--repository, else IMAGE_REPOSITORY, else ghcr.io/OWNER/REPO in Actions; ConfigError if unusable."""
    repository = explicit or env.get(REPOSITORY_VAR) or ""
    if not repository and env.get("GITHUB_REPOSITORY"):
        repository = f"ghcr.io/{env['GITHUB_REPOSITORY'].lower()}"  # GitHub names may have capitals; images not
    if not repository:
        raise ConfigError(f"no image repository: pass --repository or set {REPOSITORY_VAR} (e.g. ghcr.io/owner/repo)")
    match = _REPOSITORY.match(repository)
    if not match or not ("." in match["host"] or ":" in match["host"] or match["host"] == "localhost"):
        raise ConfigError(
            f"image repository {repository!r} is not HOST/PATH in lower case (e.g. ghcr.io/owner/repo, "
            "localhost:5000/churn-api); a name without a registry host would go to Docker Hub"
        )
    return repository


def registry_host(repository: str) -> str:
    """The registry host (and port) of HOST/PATH."""
    return repository.split("/", 1)[0]


def is_local_registry(host: str) -> bool:
    """A registry on this machine: pushed to over plain HTTP, as docker does."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in _LOCAL_HOSTS


def digest_from_push_output(text: str) -> str:
    """The manifest digest `docker push` prints (`…: digest: sha256:… size: N`)."""
    found: list[str] = re.findall(rf"digest: ({_DIGEST.pattern})", text)
    if not found:
        raise InfrastructureError("image registry: the push printed no manifest digest")
    return found[-1]


def push(engine: Engine, image: str, ref: str, env: dict[str, str]) -> str:
    """Push local `image` as `ref` (REPOSITORY:TAG); returns the registry's manifest digest."""
    host = registry_host(ref)
    with tempfile.TemporaryDirectory(prefix="registry-auth-") as tmp:
        # podman reads REGISTRY_AUTH_FILE, docker DOCKER_CONFIG: both point into this directory.
        auth_file = Path(tmp) / "auth.json"
        auth_file.write_text("{}")  # podman wants the file to exist; the directory is private (mkdtemp: 0700)
        auth = {"REGISTRY_AUTH_FILE": str(auth_file), "DOCKER_CONFIG": tmp}
        username, password = env.get(USERNAME_VAR, ""), env.get(PASSWORD_VAR, "")
        tls = ["--tls-verify=false"] if engine.name == "podman" and is_local_registry(host) else []
        if password:
            _registry_call(
                engine, host, "login", *tls, "--username", username or "token", "--password-stdin", host,
                env=auth, stdin=password,
            )  # fmt: skip
        if engine.name == "podman":
            digest_file = Path(tmp) / "digest"
            _registry_call(engine, host, "push", *tls, "--digestfile", str(digest_file), image, ref, env=auth)
            digest = digest_file.read_text().strip()
        else:
            engine.run("tag", image, ref, quiet=True, timeout=60)
            digest = digest_from_push_output(_registry_call(engine, host, "push", ref, env=auth))
    if not _DIGEST.fullmatch(digest):
        raise InfrastructureError(f"image registry: {host} answered the push with digest {digest[:80]!r}")
    return digest


def _registry_call(engine: Engine, host: str, *args: str, env: dict[str, str], stdin: str | None = None) -> str:
    """An engine command that talks to the registry; InfrastructureError naming the registry if it fails."""
    result = engine.run(*args, check=False, quiet=True, timeout=1800, env=env, stdin=stdin)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
        reason = lines[-1][:300] if lines else f"exit {result.returncode}"
        raise InfrastructureError(f"image registry {host}: `{engine.name} {args[0]}` failed: {reason}")
    return result.stdout
