"""Prepare what the stack's `mlflow server` needs before it starts; safe to run on every start.

- the artifact bucket in MinIO (MLFLOW_ARTIFACT_BUCKET), created when missing;
- the prediction API's user (MLFLOW_API_USERNAME / MLFLOW_API_PASSWORD) in the
  auth database, created when missing: auth.ini's default permission, READ, is
  all the API needs, so it never holds the admin's password.

Before anything, it refuses env.example's placeholders (`change-me…`) in every
secret it is given (exit 2, naming the variable, never the value): the tracking
server, and everything that waits for it, does not start on them.

Runs inside the image built from deploy/mlflow/Dockerfile; nothing imports it.
"""

from __future__ import annotations

import os
import sys

import boto3
from botocore.exceptions import ClientError
from mlflow.server.auth.config import read_auth_config
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore


def ensure_bucket(name: str) -> None:
    """Create the S3 bucket at MLFLOW_S3_ENDPOINT_URL unless it exists."""
    s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
    try:
        s3.head_bucket(Bucket=name)
    except ClientError:
        s3.create_bucket(Bucket=name)
        print(f"created bucket {name}")


def ensure_user(username: str, password: str) -> None:
    """Create a user with the default permission in the auth database unless it exists."""
    store = SqlAlchemyStore()
    store.init_db(read_auth_config().database_uri)  # creates or upgrades the tables, as the server does
    if not store.has_user(username):
        store.create_user(username, password)
        print(f"created user {username}")


SECRETS = (
    "PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_API_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
)  # fmt: skip


def placeholders(environ: dict[str, str]) -> list[str]:
    """The secrets among SECRETS still holding env.example's `change-me` placeholder."""
    return [name for name in SECRETS if environ.get(name, "").lower().startswith("change-me")]


def main() -> None:
    """Refuse placeholders, then ensure the bucket and the API's user."""
    unset = placeholders(dict(os.environ))
    if unset:
        print(f"refusing to start: {', '.join(unset)} still hold env.example's change-me placeholder", file=sys.stderr)
        raise SystemExit(2)
    ensure_bucket(os.environ.get("MLFLOW_ARTIFACT_BUCKET", "mlflow"))
    ensure_user(os.environ["MLFLOW_API_USERNAME"], os.environ["MLFLOW_API_PASSWORD"])


if __name__ == "__main__":
    main()
