"""Output files that never destroy a user's file: path checks and an atomic, temp-then-rename writer.

Any writer can use both, whatever format it writes:

    check_targets({"output": out, "rejects file": rejects}, [Protected("the input", src), *store_paths(uri, ...)])
    with atomic_outputs(out, rejects) as staged:
        write(staged[out]); write(staged[rejects])   # temp files in the targets' folders
        if nothing_rejected:
            staged.omit(rejects)                      # on commit: no rejects file (an earlier one is removed)
    # committed: each temp file renamed onto its target (os.replace). On an exception nothing
    # is renamed, the temp files are deleted and folders the writer created are removed again.

A temp file is `.<target's name>.<pid>.<random>.tmp`, locked (flock) by its writer while
it lives: a run that was killed leaves it unlocked, and the next run writing beside it
removes it (sweep_stale). Paths are compared as files, not as names: two paths are the same when
os.path.samefile says so (symlinks, hard links, `./x` and `x`), or, when one
does not exist yet, when they resolve to the same place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.core.errors import ConfigError

# Schemes whose tracking store is not on this machine (tracking.ensure_experiment's rule for artifacts).
REMOTE_SCHEMES = ("http", "https", "databricks")
# The files SQLite keeps beside a database while it writes.
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")
# A temp file named before writers locked theirs (no pid): removed once untouched this long.
UNLOCKED_STALE_S = 600


@dataclass(frozen=True)
class Protected:
    """A path no output may be written to: a file, or with `tree` a folder nothing may be written inside."""

    label: str  # how messages name it: "the input", "the tracking store"
    path: Path
    tree: bool = False


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one file: samefile when both exist, else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return _resolved(a) == _resolved(b)


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies within it, symlinks resolved."""
    return _resolved(path).is_relative_to(_resolved(folder))


def check_targets(targets: Mapping[str, Path], protected: Iterable[Protected], folders: bool = False) -> None:
    """Raise ConfigError (exit 2) if a target is protected, or is the same file as another target.

    A target is refused when it is a protected file, lies in a protected tree, is a folder, or is
    the same file as another target. `targets` maps a label ("output") to a path. With `folders`,
    a target is a dataset folder (Spark's output): an existing folder is not refused, a file is.
    """
    named, protected = list(targets.items()), list(protected)
    for label, path in named:
        if path.is_dir() and not folders:
            raise ConfigError(f"the {label} {path} is a folder; give a file name")
        folder = _nearest_existing(Path(os.path.realpath(path)).parent)
        if not folder.is_dir():
            raise ConfigError(f"cannot write the {label} {path}: {folder} is not a folder")
        for guard in protected:
            if guard.tree and inside(path, guard.path):
                raise ConfigError(f"refusing to write the {label} {path}: it is inside {guard.label} {guard.path}")
            if not guard.tree and same_file(path, guard.path):
                raise ConfigError(f"refusing to write the {label} {path}: it is {guard.label} {guard.path}")
        if path.is_file() and folders:
            raise ConfigError(f"the {label} {path} is a file; a dataset is written as a folder")
    for i, (label, path) in enumerate(named):
        for other_label, other in named[i + 1 :]:
            if same_file(path, other):
                raise ConfigError(f"refusing to write the {label} {path}: it is the {other_label} {other}")


def store_paths(tracking_uri: str, artifact_locations: Iterable[str] = ()) -> list[Protected]:
    """The local files and folders of an MLflow store; none when the tracking store is remote.

    The SQLite file (and its journal), a file store's folder, and the local
    artifact folders given.
    """
    if not is_local_store(tracking_uri):
        return []
    parsed = urlparse(tracking_uri)
    found = []
    if parsed.scheme == "sqlite":
        database = sqlite_path(tracking_uri)
        if database is not None:
            found.append(Protected("the tracking store", database))
            found += [Protected("the tracking store's journal", Path(f"{database}{s}")) for s in SQLITE_SIDECARS]
    else:
        folder = local_path(tracking_uri)
        if folder is not None:  # a file store: mlruns/ or file:///.../mlruns
            found.append(Protected("the tracking store", folder, tree=True))
    for location in artifact_locations:
        folder = local_path(location)
        if folder is not None:
            found.append(Protected("the artifact store", folder, tree=True))
    return found


def is_local_store(tracking_uri: str) -> bool:
    """Whether the tracking store is on this machine (then its artifacts are local too, see tracking.py)."""
    return urlparse(tracking_uri).scheme not in REMOTE_SCHEMES


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLAlchemy SQLite URI (sqlite:///relative.db, sqlite:////abs.db); None in memory."""
    rest = uri.removeprefix("sqlite:").removeprefix("//")  # an empty authority
    rest = rest.split("?", 1)[0]
    path = rest[1:] if rest.startswith("/") else rest
    return Path(unquote(path)) if path and path != ":memory:" else None


def local_path(location: str) -> Path | None:
    """The local folder of `location` (a plain path or file: URI); None for any other scheme."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and location:
        return Path(location)
    return None


class Staged:
    """The temp file of each target of an `atomic_outputs` block."""

    def __init__(self, temps: dict[Path, Path]) -> None:
        self._temps = temps
        self._omitted: set[Path] = set()

    def __getitem__(self, target: Path) -> Path:
        """The temp file to write instead of `target` (created empty, in the target's folder)."""
        return self._temps[Path(target)]

    def omit(self, target: Path) -> None:
        """Do not commit `target`: its temp file is dropped and an earlier file at `target` removed."""
        self._omitted.add(Path(target))


@contextlib.contextmanager
def atomic_outputs(*targets: Path) -> Iterator[Staged]:
    """Temp files for `targets`, renamed onto them only when the block ends without an exception.

    Each temp file sits in its target's folder (a symlinked target: the folder of the file it
    points to), so the rename is atomic; it takes an existing target's permissions. Until the
    commit an earlier file at the target stays as it was. On any exception (KeyboardInterrupt
    too) the temp files are deleted, the folders created for them removed, and the error raised.
    """
    destinations = {Path(t): Path(os.path.realpath(t)) for t in targets}
    created: list[Path] = []
    temps: dict[Path, Path] = {}
    locks: list[int] = []  # each temp file's locked descriptor, held until it is renamed or deleted
    committed = False
    try:
        for target, destination in destinations.items():
            created += _make_folders(destination.parent)
            sweep_stale(destination)
            temps[target], lock = _temp_beside(destination)
            locks.append(lock)
        staged = Staged(temps)
        yield staged
        for target, destination in destinations.items():
            if target in staged._omitted:
                temps[target].unlink()
                destination.unlink(missing_ok=True)
            else:
                _fsync(temps[target])
                os.replace(temps[target], destination)
            del temps[target]
            _fsync(destination.parent)
        committed = True
    finally:
        if not committed:
            for temp in temps.values():
                temp.unlink(missing_ok=True)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()
        for lock in locks:
            os.close(lock)


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and missing parents; the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
        else:
            made.append(path)
    return made


def sweep_stale(destination: Path) -> list[Path]:
    """Remove the temp files a killed writer left beside `destination`; the ones removed.

    A temp file is stale when no process holds its lock. One named without a pid (before
    writers locked theirs) is stale once untouched for UNLOCKED_STALE_S.
    """
    pattern = re.compile(rf"\.{re.escape(destination.name)}\.(?:(\d+)\.)?[0-9a-f]{{8}}\.tmp")
    removed: list[Path] = []
    try:
        names = os.listdir(destination.parent)
    except OSError:
        return removed
    for name in names:
        found = pattern.fullmatch(name)
        if found is None:
            continue
        temp = destination.parent / name
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its writer is alive
                if found.group(1) is None and time.time() - os.fstat(fd).st_mtime < UNLOCKED_STALE_S:
                    continue
                if os.path.samestat(os.fstat(fd), os.stat(temp, follow_symlinks=False)):
                    temp.unlink()
                    removed.append(temp)
            finally:
                os.close(fd)
    return removed


def _temp_beside(destination: Path) -> tuple[Path, int]:
    """A new empty file next to `destination`, hidden, with its permissions (else the umask's), and its lock.

    The file is made and locked under a name no sweep looks at, then renamed: a sweep never sees it unlocked.
    """
    try:
        mode = stat.S_IMODE(destination.stat().st_mode)
    except FileNotFoundError:
        mode = None
    while True:
        token = f"{os.getpid()}.{secrets.token_hex(4)}"
        making = destination.with_name(f".{destination.name}.{token}.new")
        temp = destination.with_name(f".{destination.name}.{token}.tmp")
        try:
            fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if mode is not None:
                os.fchmod(fd, mode)
            if temp.exists():
                raise FileExistsError(temp)
            os.rename(making, temp)
        except FileExistsError:
            os.close(fd)
            making.unlink(missing_ok=True)
            continue
        except OSError:
            os.close(fd)
            making.unlink(missing_ok=True)
            raise
        return temp, fd


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk so a crash after the rename leaves whole files."""
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))
