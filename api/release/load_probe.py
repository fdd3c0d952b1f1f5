"""The first load of a model version happens in a short-lived child process, never in one that serves or decides.

A crafted artifact can pass the skops allow-list and still crash or hang the
process that loads it and predicts with it (a tree whose indices point outside
its arrays, arrays that decompress to gigabytes). So the child, under a memory
limit and a timeout, reads the files, loads them with the allow-list, checks
every tree's structure (api/release/model_checks.py) and predicts the stored examples,
which must get the answers recorded at training time. It reports the digest of
the bytes it accepted; the caller then loads only bytes with that digest.

Run as `python -m api.release.load_probe --memory-mb N` with a JSON request on stdin.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from api.release.contract import FeatureSchema, SmokeExamples
from api.release.env_settings import ProbeSettings
from api.release.redact import plain_message
from api.release.safe_model import RefusedModel
from families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
# What the child inherits: nothing secret (no tracking credentials, no keys).
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
PROBABILITY_TOLERANCE = 1e-9
CHILD = ("-m", "api.release.load_probe")  # what the child runs: this module


class ProbeAnswer(TypedDict, total=False):
    """The child's answer, one JSON line: the digest it accepted, or why it refused."""

    digest: str
    refused: str


_DEFAULTS = ProbeSettings.model_fields
# Whose versions a cached verdict depends on: the loader's, and every family's model library.
LIBRARIES = (
    "scikit-learn",
    "skops",
    "numpy",
    *sorted({r.split("==")[0] for f in FAMILIES.values() for r in f.requirements}),
)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@dataclass(frozen=True)
class ProbeLimits:
    """How long a probe child may take, and how much memory it may map (ProbeSettings declares the variables)."""

    timeout_s: float = _DEFAULTS["probe_timeout_s"].default
    memory_mb: int = _DEFAULTS["probe_memory_mb"].default

    @classmethod
    def of(cls, settings: ProbeSettings) -> ProbeLimits:
        """The limits the settings read (PROBE_TIMEOUT_S, PROBE_MEMORY_MB)."""
        return cls(settings.probe_timeout_s, settings.probe_memory_mb)

    @classmethod
    def from_env(cls) -> ProbeLimits:
        """The limits in the environment, for a caller not handed its settings; SettingsError names a bad value."""
        return cls.of(ProbeSettings.from_env())


class ProbeCache:
    """What probe children accepted on this machine, so the same bytes with the same examples are probed once.

    A probe's verdict depends only on the bytes (their digest), the examples it
    answered, its limits and the libraries that ran it: all are in the key.
    Kept in PROBE_CACHE_DIR (default ~/.cache/gated-churn-model/probed, made
    private to the user; empty: no cache). A directory that cannot be
    written (a read-only container) just means no cache.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @classmethod
    def of(cls, settings: ProbeSettings) -> ProbeCache:
        """The cache the settings name (PROBE_CACHE_DIR, else the user's cache directory)."""
        return cls(settings.probe_cache_path)

    @classmethod
    def from_env(cls) -> ProbeCache:
        """The cache the environment names, for a caller not handed its settings."""
        return cls.of(ProbeSettings.from_env())

    @staticmethod
    def key(digest: str, examples: SmokeExamples | None, limits: ProbeLimits) -> str:
        """The name of a verdict: everything it depends on, hashed."""
        libraries = [_version(name) for name in LIBRARIES]
        facts = [digest, examples, limits.timeout_s, limits.memory_mb, libraries]
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()

    def holds(self, key: str) -> bool:
        """True when a child accepted these bytes with these examples and limits before."""
        return self.directory is not None and (self.directory / key).is_file()

    def add(self, key: str) -> None:
        """Remember an acceptance (silently not, where the directory cannot be written)."""
        if self.directory is None:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.directory / key).touch()
        except OSError:
            pass


def probe(model_dir: Path, feature_schema: Path, examples: SmokeExamples | None, limits: ProbeLimits) -> str:
    """The digest of the artifact a child process loaded and probed without harm; RefusedModel says why not."""
    request = {"model_dir": str(model_dir), "feature_schema": str(feature_schema), "examples": examples}
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env |= {"PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, *CHILD, "--memory-mb", str(limits.memory_mb)]
    try:
        done = subprocess.run(
            command,
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=limits.timeout_s,
            env=env,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        raise RefusedModel(f"its first load and probe took longer than {limits.timeout_s:g} s") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise RefusedModel(f"its first load crashed the probe process ({name})")
    try:
        answer: ProbeAnswer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        if b"MemoryError" in done.stderr:
            raise RefusedModel(f"its first load ran out of memory (limit {limits.memory_mb} MB)") from None
        raise RefusedModel(f"the probe process failed (exit {done.returncode}) before answering") from None
    if answer.get("refused"):
        raise RefusedModel(answer["refused"])
    return answer["digest"]


def check_answers(pipeline: Any, schema: FeatureSchema, examples: SmokeExamples | None) -> None:
    """Predict the stored examples; RefusedModel unless the answers are well formed and those recorded."""
    import numpy as np

    if not examples or not examples.get("records"):
        return
    from api.release.frames import Column, typed_frame

    records = examples["records"]
    features = [Column(f["name"], f["kind"] == "numeric") for f in schema["features"]]
    frame = typed_frame({f.name: [r.get(f.name) for r in records] for f in features}, features)
    classes = [str(c) for c in pipeline.classes_]
    if schema["positive_label"] not in classes:
        raise RefusedModel(f"the model does not predict the positive label {schema['positive_label']!r}")
    labels = [str(label) for label in pipeline.predict(frame)]
    proba = np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
    if proba.shape != (len(frame), len(classes)) or not np.isfinite(proba).all():
        raise RefusedModel("its probabilities on the stored examples are not well formed")
    expected_labels = examples.get("predictions")
    if expected_labels is not None and labels != [str(label) for label in expected_labels]:
        first = next(i for i, (a, b) in enumerate(zip(labels, expected_labels, strict=True)) if a != str(b))
        raise RefusedModel(
            f"probe: stored example {first} is answered {labels[first]!r}, recorded at training as "
            f"{expected_labels[first]!r}"
        )
    expected = examples.get("probabilities")
    positive = proba[:, classes.index(schema["positive_label"])]
    if expected is not None and not np.allclose(positive, expected, rtol=0, atol=PROBABILITY_TOLERANCE):
        raise RefusedModel("probe: probabilities on the stored examples differ from those recorded at training")


def _child(memory_mb: int) -> ProbeAnswer:
    """Set the limits first, then load, check and probe; the answer is a small JSON object."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from api.release.model_checks import check_structure
    from api.release.safe_model import load_estimator_bytes, read_artifact

    request = json.loads(sys.stdin.read())
    try:
        artifact = read_artifact(Path(request["model_dir"]), Path(request["feature_schema"]))
        pipeline = load_estimator_bytes(artifact.model_bytes)
        check_structure(pipeline)
        check_answers(pipeline, json.loads(artifact.files["feature_schema.json"]), request.get("examples"))
    except RefusedModel as exc:
        return {"refused": str(exc)}
    except MemoryError:
        return {"refused": f"its first load ran out of memory (limit {memory_mb} MB)"}
    except Exception as exc:  # anything else the model does on its first use is a refusal, not a crash
        return {"refused": f"its first use failed: {plain_message(exc) or 'no message'}"}
    return {"digest": artifact.digest}


if __name__ == "__main__":
    print(json.dumps(_child(int(sys.argv[sys.argv.index("--memory-mb") + 1]))), flush=True)
