"""A Spark job's failure as the CLI's error: unreadable data is exit 2 (DataError), a refused model exit 1."""

from __future__ import annotations

import re

from pipeline.core.errors import CheckFailed, DataError


def message(exc: BaseException) -> str:
    """The line of a Spark error that names it (a Python worker's last one), at most 300 characters."""
    text = str(exc).strip()
    for line in text.splitlines():  # a Python worker's error: its last line names it
        if re.match(r"^\w*(Error|Exception|Refused\w*): ", line.strip()):
            text = line.strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def failure(exc: BaseException, where: str) -> Exception:
    """A Spark job's failure as the CLI's error: unreadable data is exit 2, a refused model exit 1."""
    text = str(exc)
    found = re.findall(r"(DataError|RefusedModel|CheckFailed): ([^\n]+)", text)
    if found:
        kind, message = found[-1]
        return DataError(message) if kind == "DataError" else CheckFailed(f"refused on an executor: {message}")
    if "Malformed" in text or "MALFORMED" in text:
        return DataError(f"{where} is not a readable CSV: a malformed row (a field too many or too few, or a quote)")
    return exc if isinstance(exc, Exception) else RuntimeError(text)
