"""Hadoop's FileSystem from the Spark driver, for datasets on any scheme Spark can write (local, hdfs, s3a, ...).

The engine writes each dataset to a hidden sibling folder and renames it into
place only when the job succeeded (replace); a plain path is a local file and
becomes an absolute file: URI, as Spark and Hadoop read it.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class HadoopFileSystem:
    """Hadoop's FileSystem for paths of any scheme Spark can write (local, hdfs, s3a, ...)."""

    def __init__(self, spark: Any) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, uri: str) -> tuple[Any, Any]:
        path = self._jvm.org.apache.hadoop.fs.Path(to_uri(uri))
        return path.getFileSystem(self._conf), path

    def is_folder(self, uri: str) -> bool:
        """Whether `uri` is an existing folder (a dataset of files)."""
        fs, path = self._path(uri)
        return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())

    def sibling(self, uri: str) -> str:
        """A new hidden folder name next to `uri` (nothing is created)."""
        target = to_uri(uri).rstrip("/")
        head, _, tail = target.rpartition("/")
        return f"{head}/.{tail}.{secrets.token_hex(4)}.tmp"

    def replace(self, staged: str, target: str) -> None:
        """Put the folder `staged` at `target`; an earlier dataset there goes only once the new one is in place."""
        fs, new = self._path(staged)
        _, old = self._path(target)
        aside = None
        if fs.exists(old):
            aside = self._path(self.sibling(target))[1]
            if not fs.rename(old, aside):
                raise OSError(f"cannot move the earlier {target} aside")
        if not fs.rename(new, old):
            if aside is not None:
                fs.rename(aside, old)
            raise OSError(f"cannot move the new dataset into {target}")
        if aside is not None:
            fs.delete(aside, True)

    def delete(self, uri: str) -> None:
        """Remove `uri` and everything under it, if it exists."""
        fs, path = self._path(uri)
        if fs.exists(path):
            fs.delete(path, True)


def to_uri(path: str) -> str:
    """A URI Spark and Hadoop read the same way: a local path becomes an absolute file: URI."""
    return Path(path).resolve().as_uri() if is_local(path) else path


def is_local(path: str) -> bool:
    """A plain path (no scheme): checked here like the local engine's; URIs are Spark's to resolve."""
    return urlparse(path).scheme == ""
