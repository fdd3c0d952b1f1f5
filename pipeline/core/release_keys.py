"""The release keys: read from the environment, made by `keygen`, and the signing (which never ships in the image).

The serving image verifies (api/release/verdicts.py); only the pipeline signs.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from api.release.verdicts import SIGNING_KEY_VAR, BadKey, Verdict, load_verify_key, read_pem
from pipeline.core.environment import PipelineEnv
from pipeline.core.errors import ConfigError


def load_signing_key(value: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM text or the path of a PEM file; BadKey otherwise."""
    try:
        key = serialization.load_pem_private_key(read_pem(value), password=None)
    except (ValueError, TypeError) as exc:
        raise BadKey(f"{SIGNING_KEY_VAR} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadKey(f"{SIGNING_KEY_VAR} is not an Ed25519 key")
    return key


def new_key_pair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a fresh Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def sign(key: Ed25519PrivateKey, verdict: Verdict) -> str:
    """The base64 Ed25519 signature of a verdict's canonical payload."""
    return base64.b64encode(key.sign(verdict.payload())).decode()


def signing_key(env: PipelineEnv | None = None) -> Ed25519PrivateKey | None:
    """RELEASE_SIGNING_KEY as a private key, or None when unset; ConfigError (exit 2) when it is not one."""
    value = (env or PipelineEnv.read()).signing_key
    if not value:
        return None
    try:
        return load_signing_key(value)
    except BadKey as exc:
        raise ConfigError(str(exc)) from None


def verify_key(env: PipelineEnv | None = None) -> Ed25519PublicKey | None:
    """RELEASE_VERIFY_KEY, else the public half of RELEASE_SIGNING_KEY, else None: unsigned mode."""
    env = env or PipelineEnv.read()
    try:
        if env.verify_key:
            return load_verify_key(env.verify_key)
        private = signing_key(env)
    except BadKey as exc:
        raise ConfigError(str(exc)) from None
    return None if private is None else private.public_key()


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
