"""What the shadow scorer counts of its copies: pure, no process or socket (api/shadow.py runs it in a child).

A copy is production's answer (labels and probabilities, JSON) and the
request body it answered, joined by a line break (JSON never holds a raw one).
`Tally.score` decodes the bodies with the canary's own schema, predicts them
in one call, and counts how often the canary agrees with production on the
same records, how far apart their probabilities are, production's scores on
those records, and the canary's own live counts (api/live_stats.py).
For release decisions it also counts, per copy, ONE record drawn at random
(`decision`): whether the canary's label differs from production's there and
whether their probabilities moved by more than MOVED_DELTA, or that the canary
refused or failed the copy. One unit per copy, whatever its size.
`take` hands everything over as plain JSON-ready numbers and starts again.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import orjson

from api.live_stats import VersionCounts
from api.metrics import DELTA_BUCKETS, MOVED_DELTA, SCORE_BUCKETS, SHADOW_DECISION_EVENTS
from api.model.columns import Columns, Values
from api.model.loaded_model import LoadedModel


def copy_of(body: bytes, labels: list[object], probabilities: list[float]) -> bytes:
    """One copy as the scorer reads it: production's answer, a line break, the request body."""
    return orjson.dumps((labels, probabilities)) + b"\n" + body


class Tally:
    """Counts of the copies the canary scored since the last `take`."""

    def __init__(self, canary: LoadedModel) -> None:
        self.canary = canary
        self.live = VersionCounts(canary)
        self.live.take()  # a forked child inherits counts its parent had not flushed yet: not this scorer's
        self._zero()

    def _zero(self) -> None:
        self.scored = self.failed = self.agreed = self.disagreed = 0
        self.delta = [0] * (len(DELTA_BUCKETS) + 1)
        self.production = [0] * (len(SCORE_BUCKETS) + 1)
        self.delta_sum = self.production_sum = 0.0
        self.decision = dict.fromkeys(SHADOW_DECISION_EVENTS, 0)  # counted, disagreed, moved, refused

    def _failed(self) -> None:
        """A copy the canary refused or could not score."""
        self.failed += 1
        self.decision["counted"] += 1
        self.decision["refused"] += 1

    def score(self, copies: list[bytes]) -> None:
        """Score copies with the canary; one the canary refuses or cannot score is counted failed on its own."""
        decoded: list[tuple[Columns, list[object], list[float]]] = []
        for copy in copies:
            head, _, body = copy.partition(b"\n")
            try:
                labels, probabilities = orjson.loads(head)
                decoded.append((self.canary.request_columns(body), labels, probabilities))
            except Exception:
                self._failed()
        if not decoded:
            return
        try:
            self._score(decoded)
        except Exception:  # one copy the canary cannot score: find it, score the rest
            if len(decoded) == 1:
                self._failed()
                return
            for one in decoded:
                try:
                    self._score([one])
                except Exception:
                    self._failed()

    def _score(self, decoded: list[tuple[Columns, list[object], list[float]]]) -> None:
        requests = [columns for columns, _, _ in decoded]
        names = {name: None for r in requests for name in r}  # every request's features, in order
        sizes = [len(labels) for _, labels, _ in decoded]
        columns = {name: _joined([r.get(name, [None] * n) for r, n in zip(requests, sizes, strict=True)])
                   for name in names}  # fmt: skip
        result = self.canary.predict_columns(columns)
        theirs = [label for _, labels, _ in decoded for label in labels]
        if len(theirs) != len(result.labels):
            raise ValueError("production answered another number of records than the copy holds")
        self.live.add(columns, result.labels, result.probabilities, sizes)  # each copy: at most SAMPLED_RECORDS binned
        agree = sum(1 for a, b in zip(result.labels, theirs, strict=True) if a == b)
        production = np.asarray([p for _, _, probabilities in decoded for p in probabilities], dtype=np.float64)
        delta = np.abs(np.asarray(result.probabilities, dtype=np.float64) - production)
        self.agreed += agree
        self.disagreed += len(theirs) - agree
        self.delta_sum += _bin(self.delta, delta, DELTA_BUCKETS)
        self.production_sum += _bin(self.production, production, SCORE_BUCKETS)
        self.scored += len(decoded)
        self._decide(sizes, result.labels, theirs, result.probabilities, production)

    def _decide(
        self, sizes: list[int], labels: list[object], theirs: list[object], ours: list[float], production: np.ndarray
    ) -> None:
        """Count one record of each copy, drawn at random: whether the canary's label or probability moved."""
        decision, start = self.decision, 0
        for size in sizes:
            i = start + int(random.random() * size)
            decision["counted"] += 1
            if labels[i] != theirs[i]:
                decision["disagreed"] += 1
            if abs(ours[i] - float(production[i])) > MOVED_DELTA:
                decision["moved"] += 1
            start += size

    @property
    def counted(self) -> bool:
        """Whether anything was counted since the last take."""
        return bool(self.scored or self.failed or self.decision["counted"])

    def take(self) -> dict[str, Any]:
        """Everything counted since the last take, as JSON-ready values; counting starts again from zero."""
        predictions, positives, scores, score_sum, bins = self.live.take()
        taken = {
            "scored": self.scored, "failed": self.failed, "agreed": self.agreed, "disagreed": self.disagreed,
            "delta": self.delta, "delta_sum": self.delta_sum,
            "production": self.production, "production_sum": self.production_sum,
            "decision": dict(self.decision),
            "live": {"predictions": predictions, "positives": positives, "scores": scores,
                     "score_sum": score_sum if math.isfinite(score_sum) else 0.0,  # JSON has no NaN
                     "bins": {name: counts for name, _, counts in bins}},
        }  # fmt: skip
        self._zero()
        return taken


def _bin(counts: list[int], values: np.ndarray, bounds: tuple[float, ...]) -> float:
    """Add values to per-bucket counts (bucket i: bounds[i-1] < v <= bounds[i], the last above every bound)."""
    values = values[np.isfinite(values)]
    index = np.searchsorted(np.asarray(bounds), values, side="left")
    for i, n in enumerate(np.bincount(index, minlength=len(counts)).tolist()):
        counts[i] += n
    return float(values.sum())


def _joined(parts: list[Values]) -> Values:
    """One feature's values across several requests, in order (float arrays stay arrays)."""
    if all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts)
    return [value for part in parts for value in part]
