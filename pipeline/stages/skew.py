"""The gate's training/serving skew check: sampled entities' features online, and offline at the same instants.

The online read is Feast's own (pipeline/store/feature_store.py online_reference); the offline read is the
point-in-time retrieval training uses (historical), at each view's online event timestamp, so a value the
offline store holds for that instant and the online store serves must be the same. The comparison and the
verdict are gates/feature_skew.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from api.model.online_store import OnlineStore, StoreUnavailable, Unreadable, View
from gates.feature_skew import FeatureSkew, compare, skew_rule
from gates.rules import RuleResult
from pipeline.core.config import Params
from pipeline.core.errors import ConfigError, DataError, InfrastructureError
from pipeline.core.feature_training import EVENT_TIMESTAMP

if TYPE_CHECKING:
    from pipeline.store.feature_store import ServiceDescription

# Feast's online response names each feature's event timestamp `<feature>__ts` (epoch seconds).
TIMESTAMP_SUFFIX = "__ts"


def sample_ids(entities: pd.DataFrame, key: str, size: int, seed: int) -> list[str]:
    """Up to `size` distinct entity ids of the entity frame, drawn with `seed`, in their frame order."""
    ids = pd.unique(entities[key].astype(str))
    if len(ids) <= size:
        return [str(i) for i in ids]
    chosen = np.sort(np.random.default_rng(seed).choice(len(ids), size, replace=False))
    return [str(ids[i]) for i in chosen]


def _instant(value: Any, now: pd.Timestamp) -> pd.Timestamp:
    """The offline read's instant for an online event timestamp; none known (never materialized): now.

    Feast reports whole seconds, so the offline row it came from may lie up to a second later.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return now
    if isinstance(value, int | float | np.integer | np.floating):
        if value <= 0:
            return now
        stamp = pd.Timestamp(int(value), unit="s", tz="UTC")
    else:
        stamp = pd.Timestamp(value)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    if stamp.microsecond == 0 and stamp.nanosecond == 0:
        stamp += pd.Timedelta(seconds=1) - pd.Timedelta(microseconds=1)
    return stamp


def offline_entities(online: pd.DataFrame, key: str, views: dict[str, list[str]], now: pd.Timestamp) -> pd.DataFrame:
    """One entity row per (entity, view): the view's online event timestamp, marked with the view's name."""
    rows = []
    for view, features in views.items():
        stamp_column = next((f + TIMESTAMP_SUFFIX for f in features if f + TIMESTAMP_SUFFIX in online.columns), None)
        for position, entity in enumerate(online[key].astype(str)):
            stamp = online[stamp_column].iloc[position] if stamp_column else None
            rows.append({key: entity, EVENT_TIMESTAMP: _instant(stamp, now), "view": view})
    return pd.DataFrame(rows)


def offline_rows(requests: pd.DataFrame, key: str, read: Any) -> pd.DataFrame:
    """The offline values for each (entity, view) request, read once per distinct (entity, instant).

    Feast's point-in-time join keeps one row per entity and timestamp, so views read at the same instant share
    a read; `read` takes the distinct (key, event_timestamp) frame and returns its rows, same order, with features.
    """
    distinct = requests[[key, EVENT_TIMESTAMP]].drop_duplicates().reset_index(drop=True)
    answered = read(distinct).reset_index(drop=True)
    features = answered.drop(columns=[c for c in (key, EVENT_TIMESTAMP) if c in answered.columns])
    features.index = pd.MultiIndex.from_frame(distinct)
    return requests.join(features, on=[key, EVENT_TIMESTAMP])


SERVING_RULE = "serving_reader"
UNREADABLE = "<unreadable>"


def serving_frame(store: OnlineStore, project: str, key: str, views: Sequence[View], ids: list[str]) -> pd.DataFrame:
    """The API's own read of the ids (api/model/online_store.py), one row per id, a column per feature.

    What the API would serve: a feature it finds absent is None, one it cannot read is UNREADABLE.
    """
    rows = store.read(project, key, views, ids)
    frame: dict[str, list[Any]] = {key: list(ids)}
    for view in views:
        found = rows.get(view.name, {})
        for name, _ in view.features:
            values = []
            for entity in ids:
                value = found[entity].values.get(name) if entity in found else None
                values.append(UNREADABLE if isinstance(value, Unreadable) else value)
            frame[name] = values
    return pd.DataFrame(frame)


def serving_rule(service: str, sampled: int, skews: Sequence[FeatureSkew]) -> RuleResult:
    """The API's reader must read what Feast's own online read does, exactly, for every sampled entity."""
    how = f"feature service {service!r}: {sampled} entities read by the API's reader and by Feast online"
    if not skews:
        return RuleResult(SERVING_RULE, SERVING_RULE, 0.0, 0.0, True, f"{how}; every feature agrees")
    parts = [f"{s.name} differs for {s.differing}/{s.compared} (e.g. {s.example[0]}: API {s.example[2]!r}, "
             f"Feast {s.example[1]!r})" for s in skews]  # fmt: skip
    return RuleResult(
        SERVING_RULE, SERVING_RULE, 0.0, float(len(skews)), False, f"{how}; {len(skews)} differ: " + "; ".join(parts)
    )


def _serving_check(
    repo: Path, given_url: str, description: ServiceDescription, ids: list[str], online: pd.DataFrame
) -> RuleResult:
    """Feast's online values against the API's reader on the same store (skipped, passing, where it cannot run)."""
    from api.model.online_store import View as ServingView
    from api.model.online_store import open_store
    from pipeline.store import feature_store

    try:
        url = feature_store.online_url(repo, given_url)
    except ConfigError as exc:
        return RuleResult(SERVING_RULE, SERVING_RULE, None, None, True, f"not checked: {exc}")
    try:
        store = open_store(url, 5.0)
    except ValueError as exc:  # names FEATURE_STORE_URL, never its text
        raise ConfigError(str(exc)) from None
    key = description.entity_field
    served_views = [ServingView(v.name, v.features, float("inf")) for v in description.views]
    try:
        read = serving_frame(store, feature_store.project(repo), key, served_views, ids)
    except StoreUnavailable as exc:
        raise InfrastructureError(f"the API's reader of the online store: {exc}") from None
    finally:
        store.close()
    views = {v.name: [n for n, _ in v.features] for v in description.views}
    return serving_rule(description.service, len(ids), compare(online, read, key, views, 0.0))


def feature_skew(params: Params, feature_store_url: str = "") -> list[RuleResult]:
    """The skew rules for params' feature service (none when training does not read one).

    feature_skew: online against offline at the same instants. serving_reader: the API's own reader against Feast's
    online read of the same entities, so a layout the API misreads (a Feast upgrade) fails the gate, not a customer.
    """
    store = params.feature_store
    if store.service is None:
        return []
    from pipeline.store import feature_store  # the Feast adapter: only this check and training need it

    path = Path(store.entities)
    entities = feature_store.read_entities(path)
    repo = Path(store.repo)
    description = feature_store.describe(repo, store.service)
    key = description.entity_field
    if key not in entities.columns:
        raise DataError(f"entity frame {path} lacks the entity column {key!r}")
    ids = sample_ids(entities, key, store.skew.sample, params.data.seed)
    views = {v.name: [n for n, _ in v.features] for v in description.views}
    online = feature_store.online_reference(repo, store.service, ids)
    if key not in online.columns:  # the rows answer the ids asked, in order
        online = online.assign(**{key: ids})
    now = pd.Timestamp(datetime.now(UTC))
    requests = offline_entities(online, key, views, now)
    offline = offline_rows(requests, key, lambda rows: feature_store.historical(repo, store.service, rows))
    skews = compare(online, offline, key, views, store.skew.tolerance)
    reader = _serving_check(repo, feature_store_url, description, ids, online)
    return [skew_rule(store.service, len(ids), skews, store.skew.tolerance), reader]
