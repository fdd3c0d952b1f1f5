"""Credentials never leave: `scheme://user:password@host` is shown as `scheme://***@host`.

The user-info is everything between "scheme://" and the LAST "@" before the host, because clients read it that
way (urllib.parse and redis-py split the authority at its last "@", so `redis://:p@ss@host` has the password
`p@ss`), and a password may hold what a URL should not: quotes, spaces, "/". The user-info ends at a line's end,
at the next "scheme://", and at "?" or "#" (a query's "@" is not one: `http://host/x?a=b@c` is kept). The
cost of a password with "/" or a space is that a path's or a sentence's later "@" on the same line is taken
for the user-info's end: more is hidden, never less. A password given as a query or option value
(`?password=secret`, `&password=...`, `password='...'`) is shown as `password=***`.
"""

from __future__ import annotations

import logging
import re

# A scheme starting a word (the lookbehind keeps a long run of letters from being tried at every offset).
_SCHEME = r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://"
# userinfo: the longest run up to an "@" that crosses no line end, "?", "#" nor another URI's scheme.
_USERINFO = re.compile(rf"(?P<scheme>{_SCHEME})(?:(?!{_SCHEME})[^\r\n?#])*@")
# password=value as a query parameter or an option: quoted, or up to the next separator.
_PASSWORD_VALUE = re.compile(
    r"""(?P<key>(?<![A-Za-z0-9_])[A-Za-z0-9_]*(?:password|passwd)\s*=\s*)(?:'[^'\r\n]*'|"[^"\r\n]*"|[^&#;,\s'"]*)""",
    re.IGNORECASE,
)


def redact(text: object) -> str:
    """The text with the user-info part of every URI, and every password= value, replaced by ***."""
    return _PASSWORD_VALUE.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", str(text)))


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
