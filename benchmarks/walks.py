"""How many of the project's files the gate and promote stages walk through, and how often they come back.

Runs the real flow in-process on the embedded default (a temporary project:
make-data, train, gate, register, smoke, promote, each as `python -m pipeline
COMMAND` would) and profiles the gate and promote commands. Counted at file
granularity on the call events of the project's own functions (api/, pipeline/,
gates/; module and class bodies run by an import are left out): the distinct files
entered, the transitions from one file to another, and the returns (entering a
file the walk had left before).

    python benchmarks/walks.py
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROJECT = tuple(str(ROOT / package) + os.sep for package in ("api", "pipeline", "gates"))
# Whatever the caller's shell has, the walk is the default one: local store, unsigned, no CI, no cluster.
CLEARED = (
    "MLFLOW_TRACKING_URI", "PRODUCTION_TRACKING_URI", "RELEASE_SIGNING_KEY", "RELEASE_VERIFY_KEY", "KUBECONFIG",
    "GITHUB_ACTIONS", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_ENV", "GITHUB_SHA", "GITHUB_ACTOR",
)  # fmt: skip


@dataclass
class Walk:
    """The files a command entered, in order (consecutive calls in one file counted once)."""

    path: list[str] = field(default_factory=list)

    def enter(self, filename: str) -> None:
        if not self.path or self.path[-1] != filename:
            self.path.append(filename)

    def within(self, folder: str) -> Walk:
        """The same walk seen from one folder only (the calls elsewhere left out)."""
        walk = Walk()
        for file in self.path:
            if file.startswith(folder):
                walk.enter(file)
        return walk

    def summary(self) -> str:
        left: set[str] = set()
        returns = 0
        for previous, current in zip(self.path, self.path[1:], strict=False):
            left.add(previous)
            returns += current in left
        return (
            f"{len(set(self.path))} files entered, {max(len(self.path) - 1, 0)} transitions, "
            f"{returns} returns to a file already left"
        )

    def report(self, name: str) -> str:
        lines = [f"{name}: {self.summary()}", f"{name}, pipeline/ alone: {self.within('pipeline/').summary()}"]
        entries = Counter(self.path)
        lines += [f"  {count:4d}  {file}" for file, count in sorted(entries.items(), key=lambda e: (-e[1], e[0]))]
        return "\n".join(lines)


@contextlib.contextmanager
def walking(walk: Walk) -> Iterator[None]:
    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code.co_flags & inspect.CO_OPTIMIZED:  # a function, not a module or class body
            filename = frame.f_code.co_filename
            if filename.startswith(PROJECT):
                walk.enter(os.path.relpath(filename, ROOT))

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)


def cli(*args: str) -> str:
    """`python -m pipeline ARGS` in-process; its stdout (stops with its stderr when it fails)."""
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    if code != 0:
        raise SystemExit(f"{' '.join(args)} exited {code}:\n{err.getvalue()}")
    return out.getvalue().strip()


def main() -> None:
    for name in CLEARED:
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="walks-") as tmp:
        project = Path(tmp)
        shutil.copy(ROOT / "params.yaml", project / "params.yaml")
        os.chdir(project)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
        cli("make-data")
        run_id = cli("train")
        gate, promote = Walk(), Walk()
        with walking(gate):
            cli("gate", "--run-id", run_id)
        version = cli("register", "--run-id", run_id)
        cli("smoke", "--version", version)
        with walking(promote):
            cli("promote", "--version", version)
        os.chdir(ROOT)
    print(gate.report("gate"))
    print()
    print(promote.report("promote"))


if __name__ == "__main__":
    main()
