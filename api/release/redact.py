"""Credentials never leave: `scheme://user:password@host` is shown as `scheme://***@host`."""

from __future__ import annotations

import logging
import re

# userinfo of any URI: everything between "scheme://" and the first "@" before the host.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s'\"]+@")


def redact(text: object) -> str:
    """The text with the user-info part of every URI replaced by ***."""
    return _USERINFO.sub(r"\g<scheme>***@", str(text))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record's rendered message."""

    def filter(self, record: logging.LogRecord) -> bool:
        """True (every record is kept), once the record's message is redacted."""
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact_logging(*logger_names: str) -> None:
    """Install the filter on the handlers of the root logger and the named loggers."""
    for name in ("", *logger_names):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


# A file path (/a/b..., ./a, ../a) and a leading "SomethingError: ": neither belongs in an answer to a client.
_PATH = re.compile(r"(?<![\w:/.@])/(?:[\w.\-]+/)+[\w.\-]*|(?<![\w/])\.{1,2}/[\w.\-/]+")
_CLASS_PREFIX = re.compile(r"\b(?:[a-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Warning|Exit|Interrupt)\s*:\s*")


def plain_message(text: object, limit: int = 300) -> str:
    """A message fit for an answer to a client: credentials redacted, first line, no file path or exception class."""
    lines = redact(text).strip().splitlines()
    line = _CLASS_PREFIX.sub("", lines[0].strip()) if lines else ""
    line = _PATH.sub("<path>", line)
    return line if len(line) <= limit else line[:limit] + "…"
