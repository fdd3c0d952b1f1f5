"""The release keys from the environment, and `keygen`."""

from __future__ import annotations

import os
from pathlib import Path

from api.release.verdicts import SIGNING_KEY_VAR, BadKey, load_signing_key, new_key_pair, verify_key_from_env
from pipeline.core.errors import ConfigError


def signing_key():
    """RELEASE_SIGNING_KEY as a private key, or None when unset."""
    value = os.environ.get(SIGNING_KEY_VAR)
    if not value:
        return None
    try:
        return load_signing_key(value)
    except BadKey as exc:
        raise ConfigError(str(exc)) from None


def verify_key():
    """RELEASE_VERIFY_KEY (or the public half of RELEASE_SIGNING_KEY), or None: unsigned mode."""
    try:
        return verify_key_from_env(os.environ)
    except BadKey as exc:
        raise ConfigError(str(exc)) from None


def write_key_pair(directory: Path) -> tuple[Path, Path]:
    """DIR/release.key (mode 600) and DIR/release.pub; refuses to overwrite a key."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / "release.key", directory / "release.pub"
    if private_path.exists():
        raise ConfigError(f"{private_path} exists; refusing to overwrite a release key")
    private, public = new_key_pair()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    public_path.write_bytes(public)
    return private_path, public_path
