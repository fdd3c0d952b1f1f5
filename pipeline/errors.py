"""Errors that map onto the CLI's exit codes (DESIGN.md)."""


class PipelineError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = 2


class ConfigError(PipelineError):
    """Bad params, bad usage or an unreachable tracking server (exit 2)."""


class DataError(PipelineError):
    """The data set cannot be used (exit 2)."""


class CheckFailed(PipelineError):
    """A gate, smoke or promotion check said no (exit 1)."""

    exit_code = 1
