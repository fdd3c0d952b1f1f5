"""An open input, read ahead in a thread of its own: what the readers hand the engines."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

WAITING_BYTES = 16 << 20  # batches read ahead of the one being scored, at most (at least one)


@dataclass
class Source:
    """An open input: its schema, batches and how far reading has got (for the progress line).

    `batches` are read in a thread of their own (ReadAhead); close() stops it and closes the file.
    """

    path: Path
    format: str
    schema: pa.Schema  # a CSV's columns are all text; `coded` ones arrive dictionary-encoded in the batches
    batches: ReadAhead
    total_rows: int | None  # Parquet knows; CSV is estimated from the bytes read
    _size: int
    _position: Any  # callable: bytes read so far

    def share_read(self) -> float | None:
        """How much of a CSV input has been read (0..1), or None when the row count is known."""
        if self.total_rows is not None or self._size == 0:
            return None
        return min(float(self._position()) / self._size, 1.0)

    def close(self) -> None:
        """Stop reading and close the input (idempotent)."""
        self.batches.close()


class ReadAhead:
    """Batches read in a thread of their own: pyarrow parses the next ones, without the GIL, while this one is scored.

    The batches waiting hold at most `limit` bytes (always at least one batch), so
    memory stays flat; limit() changes it, e.g. from a start-up's read-ahead to a
    couple of batches once scoring runs. An error while reading is raised by the
    iteration after the batches read before it, as reading in the caller's thread
    would. close() stops the thread, which closes the reader.
    """

    _END = object()

    def __init__(self, batches: Iterator[pa.RecordBatch], limit: int = WAITING_BYTES) -> None:
        self._batches = batches
        self._limit = limit
        self._waiting: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._changed = threading.Condition()
        self._stop = False
        self._done = False
        self._thread = threading.Thread(target=self._read, name="reader", daemon=True)
        self._thread.start()

    def __iter__(self) -> ReadAhead:
        return self

    def __next__(self) -> pa.RecordBatch:
        if self._done:
            raise StopIteration
        with self._changed:
            while not self._waiting:
                self._changed.wait()
            item, size = self._waiting.popleft()
            self._bytes -= size
            self._changed.notify_all()
        if item is ReadAhead._END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def limit(self, size: int) -> None:
        """At most `size` bytes of batches wait from now on."""
        with self._changed:
            self._limit = size
            self._changed.notify_all()

    def close(self) -> None:
        """Stop reading: the thread finishes the batch it is parsing, if any, closes the reader and ends."""
        self._done = True
        with self._changed:
            self._stop = True
            self._waiting.clear()
            self._changed.notify_all()
        self._thread.join()

    def _read(self) -> None:
        try:
            for batch in self._batches:
                if not self._put(batch, batch.nbytes):
                    return
            self._put(ReadAhead._END, 0)
        except BaseException as exc:  # handed to the caller, raised where it iterates
            self._put(exc, 0)
        finally:
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()  # a generator's `finally`: the file is closed in the thread that read it

    def _put(self, item: Any, size: int) -> bool:
        with self._changed:
            while not self._stop and self._waiting and self._bytes + size > self._limit:
                self._changed.wait()
            if self._stop:
                return False
            self._waiting.append((item, size))
            self._bytes += size
            self._changed.notify_all()
            return True
