"""Errors that map onto the CLI's exit codes (docs/DESIGN.md).

0 success, 1 a check said no, 2 bad usage, params or data, 3 the
infrastructure failed (tracking server, artifact store, container engine,
image registry).
"""


class PipelineError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = 2


class ConfigError(PipelineError):
    """Bad params or bad usage (exit 2)."""


class DataError(PipelineError):
    """The data set cannot be used (exit 2)."""


class CheckFailed(PipelineError):
    """A gate, smoke, promotion or integrity check said no (exit 1)."""

    exit_code = 1


class InfrastructureError(PipelineError):
    """Something the pipeline depends on failed: tracking server, artifact store, container engine (exit 3)."""

    exit_code = 3
