"""Turn an exception from a library into an exit code and one line naming what failed."""

from __future__ import annotations

import errno
import subprocess

from pipeline.core.environment import PipelineEnv

# MLflow error codes that mean the request itself was wrong, not the service.
BAD_INPUT_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "BAD_REQUEST",
    "INVALID_STATE",
}
AUTH_CODES = {"UNAUTHENTICATED", "PERMISSION_DENIED"}
STORAGE_ERRNOS = {errno.ENOSPC: "is full", errno.EDQUOT: "is over quota", errno.EROFS: "is read-only"}


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for an exception that is not a PipelineError."""
    from mlflow.exceptions import MlflowException

    from api.release.env_settings import SettingsError
    from gates.release_policy import ReleaseRefused

    if isinstance(exc, ReleaseRefused):
        return 1, str(exc)
    if isinstance(exc, SettingsError):  # a setting shared with the API (PROBE_*): its one line names it
        return 2, str(exc)

    if isinstance(exc, MlflowException):
        text = _first_line(exc.message)
        if exc.error_code in BAD_INPUT_CODES:
            return 2, f"MLflow refused the request: {text}"
        if exc.error_code in AUTH_CODES or " 401" in text or " 403" in text:
            return 3, _credentials_refused(exc.error_code, text)
        return 3, f"tracking server or artifact store failed: {text}"
    if _is_network_error(exc):  # before OSError: requests' errors are OSErrors too
        return 3, f"network request failed: {type(exc).__name__}: {_first_line(str(exc))}"
    if isinstance(exc, OSError):
        what = STORAGE_ERRNOS.get(exc.errno) if exc.errno is not None else None
        where = exc.filename or "a local path"
        if what:
            return 3, f"storage {what}: cannot write {where}"
        return 3, f"I/O failed on {where}: {exc.strerror or exc}"
    if isinstance(exc, subprocess.SubprocessError):
        return 3, f"a subprocess failed: {_first_line(str(exc))}"
    return 3, f"unexpected {type(exc).__name__}: {_first_line(str(exc))} (run with --debug for the traceback)"


def _credentials_refused(error_code: str, text: str) -> str:
    """Which of: no credentials, wrong credentials, or a user without the permission (never the password)."""
    auth = PipelineEnv.read().mlflow_auth
    user = auth.get("MLFLOW_TRACKING_USERNAME")
    if error_code == "PERMISSION_DENIED" or " 403" in text:
        who = f"user {user!r}" if user else "this client"
        return f"tracking server denied {who} the permission for this request (403): {text}"
    if not user and not auth.get("MLFLOW_TRACKING_TOKEN"):
        return "tracking server requires credentials (401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    if not user:
        return "tracking server rejected MLFLOW_TRACKING_TOKEN (401)"
    return f"tracking server rejected the credentials of user {user!r} (401): wrong password or unknown user"


def _is_network_error(exc: BaseException) -> bool:
    import httpx
    import requests

    return isinstance(exc, requests.RequestException | httpx.TransportError | httpx.HTTPStatusError)


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:500] if (text or "").strip() else ""
