"""Benchmark: /predict's decode and predict per request, before and after issue 31, in one process.

Usage (from the project root; the registry's version after `make demo`, else a model trained here):
    .venv/bin/python benchmarks/decode_predict.py [--rounds 9]

For a 1-record and a 1,000-record body of the version's test set (nulls where
it has missing values), in the same run and on the same bodies:
- decode: `LoadedModel.request_columns` (api/model/fast_decoders.py) against
  the old RecordDecoder.columns, kept here verbatim as `OldRecordDecoder`;
- predict: `LoadedModel.predict_columns` (api/model/compiled.py) against the
  old compiled transform and predict, kept here verbatim as `old_predict`;
- orjson.loads of the body: what a raw ASGI app that parses and answers a
  constant pays (the ceiling's own work), for the share of the budget;
- the shared request step (api/request_path.py: choose the side, decode,
  predict, live stats, the decisions' counting) against decode and predict
  alone, then /predict's answer (ids, JSON) and the whole app as uvicorn
  calls it (its request metrics): what each layer adds, in process.
Before timing, the answers are checked equal: the columns value for value,
the labels and the probabilities as floats, bit for bit, on the 1,000-record
body and on every test record alone (the one-record path).

The machine may be shared (others running tests): each figure is the median
over rounds of the mean time a call, old and new interleaved in every round.
Budget (issue 31): a 1,000-record request may cost the API ~0.45 ms beyond the
raw app's parse to reach 75 % of its rows/s; one record, ~50 µs of in-process
work in all to reach half its req/s.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from itertools import chain, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pandas as pd
from scipy.special import expit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.model.compiled import CompiledPipeline  # noqa: E402
from api.model.loaded_model import LoadedModel  # noqa: E402
from api.model.schema import FeatureSpec  # noqa: E402
from benchmarks.versions import registry_version, trained_version  # noqa: E402

BUDGET_BATCH = 450e-6  # seconds a 1,000-record request may cost beyond the raw app's parse (75 % of its rows/s)
BUDGET_ONE = 50e-6  # seconds of in-process work a one-record request may cost in all (half the raw app's req/s)


# --- the old implementations, verbatim ------------------------------------------------------------------------


class OldRecordDecoder:
    """RecordDecoder as it was before issue 31 (msgspec Structs, then one attrgetter pass per column)."""

    def __init__(self, features: list[FeatureSpec], entity_field: str | None = None) -> None:
        fields: list[tuple[str, object] | tuple[str, object, None]] = []
        for i, spec in enumerate(features):
            kind = spec.value_type
            fields.append((f"f{i}", kind) if spec.required else (f"f{i}", kind | None, None))
        rename = {f"f{i}": s.name for i, s in enumerate(features)}
        self._entity = entity_field if entity_field and entity_field not in rename.values() else None
        if self._entity:
            fields.append(("entity", str | int | float | None, None))
            rename["entity"] = self._entity
        record = msgspec.defstruct("Record", fields, rename=rename, forbid_unknown_fields=True, kw_only=True)
        body = msgspec.defstruct("PredictBody", [("records", list[record])], forbid_unknown_fields=True)  # type: ignore[valid-type]
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(body)
        self._getters = [(spec, attrgetter(f"f{i}")) for i, spec in enumerate(features)]

    def columns(self, body: bytes, limit: int) -> dict[str, Any] | None:
        try:
            records = self._decoder.decode(body).records
        except (msgspec.MsgspecError, ValueError):
            return None
        if not 0 < len(records) <= limit:
            return None
        columns: dict[str, Any] = {}
        for spec, get in self._getters:
            values = list(map(get, records))
            columns[spec.name] = np.array(values, dtype=np.float64) if spec.numeric else values
        if self._entity:
            columns[self._entity] = [record.entity for record in records]
        return columns


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def old_transform(self: CompiledPipeline, columns: dict[str, Any]) -> np.ndarray:
    """CompiledPipeline.transform before issue 31 (a lookup per value, then a scatter of the ones)."""
    columns = dict(self.featured(columns))
    rows = len(next(iter(columns.values())))
    out = np.zeros((rows, self.width))
    for offset, block in self.numeric:
        values = np.array([columns[c] for c in block.columns], dtype=np.float64).T
        out[:, offset : offset + len(block.columns)] = block.apply(values)
    for offset, codes in self.codes:  # CodeBlock.apply, as it was
        code = np.empty((rows, len(codes.columns)))
        for j, (name, lookup) in enumerate(zip(codes.columns, codes.lookups, strict=True)):
            code[:, j] = np.fromiter(map(lookup.get, columns[name], repeat(np.nan)), np.float64, rows)
        out[:, offset : offset + len(codes.columns)] = code
    if self.categorical:
        index = np.fromiter(
            chain.from_iterable(map(lookup.get, columns[name], repeat(-1)) for name, _, lookup in self.categorical),
            np.intp,
            rows * len(self.categorical),
        ).reshape(len(self.categorical), rows)
        if (index < 0).any():
            for i, row in zip(*np.nonzero(index < 0), strict=True):  # _resolve_missing, as it was
                name, fill, lookup = self.categorical[i]
                if _missing(columns[name][row]):
                    index[i, row] = lookup.get(fill, -1)
        flat = index + np.arange(rows) * self.width
        out.put(flat[index >= 0], 1.0)
    return out


def old_predict(self: CompiledPipeline, columns: dict[str, Any], positive: int) -> tuple[list[Any], list[float]]:
    """CompiledPipeline.predict before issue 31, then LoadedModel.predict_columns' lists."""
    X = old_transform(self, columns)
    if self.linear:
        scores = (X @ self.coef_T + self.intercept).reshape(-1)
        proba = np.empty((len(scores), 2))
        proba[:, 1] = expit(scores)
        proba[:, 0] = 1 - proba[:, 1]
        labels = self.classes[(scores > 0).astype(np.intp)]
    else:
        proba = self.estimator.predict_proba(X)
        labels = self.classes[np.argmax(proba, axis=1)]
    return labels.tolist(), proba[:, positive].tolist()


# --- the version ----------------------------------------------------------------------------------------------


# --- checks and timings ---------------------------------------------------------------------------------------


def same_columns(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Equal column for column, value for value (NaN equal to NaN), in the same order."""
    if list(old) != list(new):
        return False
    for name, values in old.items():
        a, b = np.asarray(values, dtype=object).tolist(), np.asarray(new[name], dtype=object).tolist()
        if len(a) != len(b) or any(x != y and not (_nan(x) and _nan(y)) for x, y in zip(a, b, strict=True)):
            return False
    return True


def _nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def same_answers(old: tuple[list[Any], list[float]], new: tuple[list[Any], list[float]]) -> bool:
    """The same labels and the same probabilities, bit for bit."""
    labels, probabilities = old
    return labels == new[0] and np.array_equal(np.asarray(probabilities), np.asarray(new[1]))


def check(model: LoadedModel, old: OldRecordDecoder, bodies: list[bytes]) -> int:
    """Every body decoded and predicted both ways, compared; the number of bodies checked (SystemExit if any differ)."""
    compiled = model.compiled
    assert compiled is not None
    for body in bodies:
        before, after = old.columns(body, model.max_batch_size), model.request_columns(body)
        assert before is not None, "the old decoder refused a body of the test set"
        if not same_columns(before, dict(after)):
            raise SystemExit(f"decode differs on a body of {len(before[model.features[0].name])} records")
        prediction = model.predict_columns(after)
        if not same_answers(
            old_predict(compiled, before, model.positive_index), (prediction.labels, prediction.probabilities)
        ):
            raise SystemExit(f"predict differs on a body of {len(before[model.features[0].name])} records")
    return len(bodies)


def timed(steps: dict[str, Callable[[], object]], reps: int, rounds: int) -> dict[str, float]:
    """Per step, the median over rounds of the mean seconds a call; the steps interleaved in every round."""
    for step in steps.values():
        step()
    means: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(reps):
                step()
            means[name].append((time.perf_counter() - started) / reps)
    return {name: statistics.median(values) for name, values in means.items()}


def bodies_of(X: pd.DataFrame) -> tuple[list[dict[str, Any]], bytes, bytes]:
    """The test set's records (null where missing), a 1-record body and a 1,000-record body of them."""
    records = json.loads(X.to_json(orient="records"))
    batch = (records * (1000 // len(records) + 1))[:1000]
    return records, orjson.dumps({"records": records[:1]}), orjson.dumps({"records": batch})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="churn-classifier")
    parser.add_argument("--alias", default="production")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    model, X, what = registry_version(args.model, args.alias) or trained_version()
    if model.compiled is None:
        print(f"{what}: no compiled path ({model.compile_note}); nothing to compare", file=sys.stderr)
        return 1
    old = OldRecordDecoder(model.features, model.entity_field)
    records, one, batch = bodies_of(X)
    alone = [orjson.dumps({"records": [record]}) for record in records]
    checked = check(model, old, [batch, *alone])
    print(f"{what}\n{model.compile_note}")
    print(f"checked: {checked} bodies (1,000 records, and each of {len(alone)} test records alone): the same "
          "columns, labels and probabilities (bit for bit) before and after")  # fmt: skip
    print(f"medians of {args.rounds} rounds, old and new interleaved (the machine may be shared)\n")
    compiled = model.compiled
    for body, n in ((one, 1), (batch, 1000)):
        before, after = old.columns(body, model.max_batch_size), model.request_columns(body)
        assert before is not None
        t = timed(
            {
                "parse": partial(orjson.loads, body),
                "decode_old": partial(old.columns, body, model.max_batch_size),
                "decode_new": partial(model.request_columns, body),
                "predict_old": partial(old_predict, compiled, before, model.positive_index),
                "predict_new": partial(model.predict_columns, after),
            },
            reps=3000 if n == 1 else 100,
            rounds=args.rounds,
        )
        old_total, new_total = t["decode_old"] + t["predict_old"], t["decode_new"] + t["predict_new"]
        size = f"{n:>5} record{'s' if n > 1 else ''} ({len(body):,} bytes)"
        print(f"{size}, µs a request (orjson.loads: {t['parse'] * 1e6:.1f})")
        for step in ("decode", "predict"):
            a, b = t[f"{step}_old"], t[f"{step}_new"]
            print(f"    {step:<8} {a * 1e6:9.1f} -> {b * 1e6:9.1f}   ({a / b:.2f}x)")
        print(f"    {'both':<8} {old_total * 1e6:9.1f} -> {new_total * 1e6:9.1f}   ({old_total / new_total:.2f}x)")
        if n == 1:
            share = new_total / BUDGET_ONE
            print(f"    share of the one-record budget (~{BUDGET_ONE * 1e6:.0f} µs of in-process work in all): "
                  f"{old_total / BUDGET_ONE:.0%} -> {share:.0%}")  # fmt: skip
        else:
            beyond_old, beyond_new = old_total - t["parse"], new_total - t["parse"]
            print(f"    beyond the raw app's parse: {beyond_old * 1e6:.0f} -> {beyond_new * 1e6:.0f} µs, of a "
                  f"budget of ~{BUDGET_BATCH * 1e6:.0f} µs for all the API's extra work: "
                  f"{beyond_old / BUDGET_BATCH:.0%} -> {beyond_new / BUDGET_BATCH:.0%}")  # fmt: skip
    request_step(model, one, batch, args.rounds)
    return 0


def request_step(model: LoadedModel, one: bytes, batch: bytes, rounds: int) -> None:
    """What the shared request step (api/request_path.py) adds to decode and predict, and what /predict adds to it.

    Off: the door decodes and predicts itself. On: RequestPath.answer (choose
    the side, decode, predict, live stats, the decisions' counting). Then
    /predict's handler whole (request id, prediction ids, the answer's JSON,
    its request metrics) and the whole app as uvicorn calls it, in process.
    """
    import asyncio

    from api.app import create_app
    from api.holder import ModelHolder
    from api.settings import Settings

    app = create_app(ModelHolder(model=model), Settings())
    door, path = app.predict, app.predict.path
    loop = asyncio.new_event_loop()
    print("\nthe request step and the door, in process (µs a request; the app: as uvicorn calls it, no server):")
    for body, n in ((one, 1), (batch, 1000)):
        scope = {"type": "http", "method": "POST", "path": "/predict", "client": ("127.0.0.1", 1),
                 "headers": [(b"content-length", str(len(body)).encode())]}  # fmt: skip
        times = 100 if n == 1 else 10  # requests a timed call answers
        traffic = door.holder.traffic
        calls: dict[str, Callable[[], Any]] = {
            "step": partial(path.answer, model, None, traffic, LoadedModel.request_columns, body, scope, 0.0, None),
            "door": partial(door.answer, body, scope, None, "r"),
            "app": partial(_app_call, app, scope, body),
        }
        steps: dict[str, Callable[[], object]] = {"off": partial(_decode_predict, model, body, times)}
        for name, call in calls.items():
            steps[name] = partial(_run, loop, call, times)
        per = {name: seconds / times for name, seconds in timed(steps, 30 if n == 1 else 5, rounds).items()}
        print(f"  {n:>5} record{'s' if n > 1 else ' '}: decode + predict {per['off'] * 1e6:8.1f}; "
              f"the request step {per['step'] * 1e6:8.1f}; /predict's answer {per['door'] * 1e6:8.1f}; "
              f"the app {per['app'] * 1e6:8.1f}")  # fmt: skip
        door.flush()
    loop.close()


def _decode_predict(model: LoadedModel, body: bytes, times: int) -> None:
    for _ in range(times):
        model.predict_columns(model.request_columns(body))


def _run(loop: Any, call: Callable[[], Any], times: int) -> None:
    loop.run_until_complete(_repeated(call, times))


async def _repeated(call: Callable[[], Any], times: int) -> None:
    for _ in range(times):
        await call()


def _app_call(app: Any, scope: dict[str, Any], body: bytes) -> Any:
    """The app called as uvicorn calls it, the body in one message, the answer dropped."""
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_: dict[str, Any]) -> None:
        return None

    return app(dict(scope), receive, send)


if __name__ == "__main__":
    raise SystemExit(main())
