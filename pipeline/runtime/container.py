"""Build the API image and run it, with docker where an engine runs, else podman.

Where no registry can be reached (as on an offline build machine) the default
base image cannot be pulled; podman then imports a Debian base built locally
with debootstrap. This command fills a wheelhouse on the host (build/wheels)
first, which the Dockerfile's builder stage installs from, so the build itself
needs no network; a plain `docker build .` without it uses the package index.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from api.release.redact import redact
from pipeline.ci.progress import say
from pipeline.core.environment import PipelineEnv
from pipeline.core.errors import CheckFailed, ConfigError, InfrastructureError

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
DEFAULT_BASE = "python:3.11-slim-bookworm"
# With the C++ and OpenMP runtimes XGBoost and LightGBM load (libstdc++6, libgomp1); a new name, so a base
# bootstrapped before they were needed is not reused.
LOCAL_BASE = "localhost/debian-py:bookworm-omp"
PODMAN_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
PODMAN_STORAGE = """[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
"""
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
# Forwarded to containers so they reach an authenticated tracking server too.


@dataclass(frozen=True)
class Engine:
    """A container engine's command and the environment it needs (podman: its config files)."""

    name: str  # docker | podman
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self,
        *args: str,
        timeout: float = 900,
        check: bool = True,
        quiet: bool = False,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run an engine command; `env` and `stdin` carry what must never be on its command line."""
        try:
            result = subprocess.run(
                [self.name, *args],
                env={**os.environ, **self.env, **(env or {})},
                input=stdin,
                capture_output=quiet,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise InfrastructureError(f"`{self.name} {' '.join(args[:2])}` did not finish in {timeout:.0f}s") from None
        if check and result.returncode != 0:
            detail = (result.stderr or "").strip()[-800:] if quiet else ""
            raise InfrastructureError(
                f"container engine: `{self.name} {' '.join(args[:2])} ...` failed (exit {result.returncode}) {detail}"
            )
        return result

    def has_image(self, ref: str) -> bool:
        """Whether the engine has the image `ref` locally."""
        return self.run("image", "inspect", ref, check=False, quiet=True, timeout=60).returncode == 0


def find_engine() -> Engine:
    """Docker when a Docker engine answers, else podman, else a loud error."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return Engine("docker")
    if shutil.which("podman"):
        conf = BUILD / "containers"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "containers.conf").write_text(PODMAN_CONF)
        (conf / "storage.conf").write_text(PODMAN_STORAGE)
        settings = PipelineEnv.read()
        env = {
            "CONTAINERS_CONF": _unless_unset(settings.containers_conf, str(conf / "containers.conf")),
            "CONTAINERS_STORAGE_CONF": _unless_unset(settings.containers_storage_conf, str(conf / "storage.conf")),
        }
        engine = Engine("podman", env)
        if engine.run("info", check=False, quiet=True, timeout=60).returncode == 0:
            return engine
        raise InfrastructureError("container engine: podman is installed but cannot start (see `podman info`)")
    raise InfrastructureError("no container engine: no Docker engine answers and podman is not installed")


def fill_wheelhouse() -> Path:
    """build/wheels: the serving wheels for the image's Python (3.11, manylinux).

    Downloaded once per requirements/serve.txt into a user cache, then copied
    into the build context, so repeated builds (and their layer cache) skip pip.
    """
    requirements = ROOT / "requirements" / "serve.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    cache_home = PipelineEnv.read().cache_home
    cache = Path(Path.home() / ".cache" if cache_home is None else cache_home) / "gated-deploy" / f"wheels-{digest}"
    if not (cache / ".complete").exists():
        say(f"  downloading serving wheels into {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        platforms = [arg for tag in WHEEL_PLATFORMS for arg in ("--platform", tag)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", *platforms,
             "-d", str(cache), "-r", str(requirements)],
            check=True,
        )  # fmt: skip
        (cache / ".complete").touch()
    wheels = BUILD / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.copytree(cache, wheels, ignore=shutil.ignore_patterns(".complete"))
    return wheels


def resolve_base_image(engine: Engine, requested: str | None) -> str:
    """The requested base, else the official slim image, else (podman, offline) a local Debian base."""
    if requested:
        return requested
    if engine.has_image(DEFAULT_BASE):
        return DEFAULT_BASE
    if engine.run("pull", f"docker.io/library/{DEFAULT_BASE}", check=False, quiet=True, timeout=300).returncode == 0:
        return DEFAULT_BASE
    if engine.name != "podman":
        raise InfrastructureError(f"image registry: cannot pull {DEFAULT_BASE}; pass --base-image")
    if not engine.has_image(LOCAL_BASE):
        bootstrap_debian_base(engine)
    return LOCAL_BASE


def bootstrap_debian_base(engine: Engine) -> None:
    """Debian bookworm with python3 (and the runtimes the model libraries load) from the machine's apt mirror."""
    if not shutil.which("debootstrap"):
        raise InfrastructureError(
            f"image registry: cannot pull {DEFAULT_BASE} and debootstrap is not installed to build a base image"
        )
    rootfs = BUILD / "debian-rootfs"
    say(f"  no registry reachable: building {LOCAL_BASE} with debootstrap (about a minute)")
    shutil.rmtree(rootfs, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,libstdc++6,libgomp1",
            "bookworm",
            str(rootfs),
            _mirror(),
        ],
        check=True,
        capture_output=True,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        [engine.name, "import", "-", LOCAL_BASE], stdin=tar.stdout, env={**os.environ, **engine.env}, check=True
    )
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)


def _mirror() -> str:
    """The Debian mirror apt is configured with on this machine."""
    for source in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            for line in source.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] or words[:1] == ["deb"]:
                    uri = words[1] if words[0] == "URIs:" else next(w for w in words[1:] if "://" in w)
                    if "security" not in uri:
                        return uri
    return "http://deb.debian.org/debian"


def build_image(tag: str, git_sha: str, base_image: str | None = None) -> str:
    """Build the API image from the Dockerfile; returns the tag."""
    engine = find_engine()
    fill_wheelhouse()
    base = resolve_base_image(engine, base_image)
    say(f"  {engine.name} build {tag} from {base}")
    args = ["build", "-t", tag, "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"GIT_SHA={git_sha}"]
    if engine.name == "podman":
        # docker format keeps HEALTHCHECK; the build needs no network (wheelhouse).
        args += ["--format", "docker", "--network", "none"]
    engine.run(*args, "-f", str(ROOT / "Dockerfile"), str(ROOT))
    return tag


@contextlib.contextmanager
def running_container(tag: str, env: dict[str, str], port: int, auth: Mapping[str, str]) -> Iterator[str]:
    """Run the image on the host network, listening on 127.0.0.1:port, with the tracking store's `auth`; removed."""
    engine = find_engine()
    if not engine.has_image(tag):
        raise CheckFailed(f"image {tag} not found in {engine.name}; build it with `python -m pipeline image`")
    name = f"api-smoke-{uuid.uuid4().hex[:8]}"
    env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}
    env.update(auth)  # MLFLOW_TRACKING_{USERNAME,PASSWORD,TOKEN} when set
    # `-e NAME` without a value: the engine copies it from its own environment, so
    # credentials in a tracking URI or a password never appear on a command line (ps).
    flags = [arg for key in env for arg in ("-e", key)]
    engine.run("run", "-d", "--name", name, "--network", "host", *flags, tag, quiet=True, timeout=120, env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        logs = engine.run("logs", name, check=False, quiet=True, timeout=30)
        engine.run("rm", "-f", name, check=False, quiet=True, timeout=60)
        tail = ((logs.stdout or "") + (logs.stderr or "")).strip().splitlines()[-15:]
        if tail:
            say("  container log (last lines):\n    " + "\n    ".join(tail))


def image_digest(tag: str) -> str:
    """The image's content digest (`sha256:…` of its config, the image ID)."""
    engine = find_engine()
    if not engine.has_image(tag):
        raise CheckFailed(f"image {tag} not found in {engine.name}; build it with `python -m pipeline image`")
    image_id = engine.run("image", "inspect", "--format", "{{.Id}}", tag, quiet=True, timeout=60).stdout.strip()
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


def require_http_tracking(uri: str) -> None:
    """ConfigError unless `uri` is an HTTP(S) tracking server, the only kind a container can reach."""
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"smoke --image needs a tracking server the container can reach over HTTP; "
            f"MLFLOW_TRACKING_URI is {redact(uri)!r} (start one with `python -m pipeline tracking-server`)"
        )


def _unless_unset(value: str | None, default: str) -> str:
    """The variable's value as set (even empty), else `default`."""
    return default if value is None else value
