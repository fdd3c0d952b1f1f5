"""make-data and train: the data set, and a fitted model logged as a run."""

from __future__ import annotations

from pathlib import Path

from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import Params
from pipeline.core.data import Dataset, load_dataset
from pipeline.core.feature_training import (
    TAG_VIEWS,
    FeatureSource,
    entities_fingerprint,
    entity_frame,
    feature_dataset,
    feature_names,
    service_record,
    training_fingerprint,
)
from pipeline.core.train import train
from pipeline.stages.context import Context
from pipeline.store import training_runs


def make_data(params: Params, force: bool = False) -> Path:
    """Write the generated churn data set to `data.path`, unless a file is already there."""
    path = Path(params.data.path)
    if path.exists() and not force:
        say(f"✓ data: {path} exists; left as is (--force regenerates)")
        return path
    with stage("data", f"generating {params.data.rows} churn-shaped rows (seed {params.data.seed}) into {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        generate_churn(params.data.rows, params.data.seed).to_csv(path, index=False)
    return path


def train_stage(params: Params) -> str:
    """Fit, score and log a run; returns the run id.

    With `feature_store.service` set, the data set is the service's features for the entity frame's rows,
    each read as of its own event timestamp (Feast's historical retrieval); otherwise the CSV at data.path.
    """
    ctx = Context.open(params)  # fail fast, before any work, if the tracking server is down
    store = params.feature_store
    source_text = params.data.path if store.service is None else f"feature service {store.service} ({store.entities})"
    with stage("train", f"{params.model.type} on {source_text}"):
        source: FeatureSource | None = None
        if store.service is None:
            data = load_dataset(params.data)
        else:
            data, source = load_feature_dataset(params)
            views, defined = source.tags[TAG_VIEWS], source.record["definitions_hash"][:12]
            say(f"  {store.service}: views {views}, definitions {defined}")
        for note in data.notes:
            say(f"  note: {note}")
        result = train(data, params.model, params.data.test_size, params.data.seed)
        say(
            f"  {data.rows} rows, {len(data.schema)} features; "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        )
        run_id = training_runs.log_training_run(ctx.tracking, params, data, result, source)
        say(f"  logged run {run_id}")
    github.write_outputs(ctx.env.github, run_id=run_id)
    return run_id


def load_feature_dataset(params: Params) -> tuple[Dataset, FeatureSource]:
    """The entity frame's rows with the feature service's values as of each row's event timestamp.

    Feast runs in its own environment (pipeline/store/feature_store.py); its errors carry their exit code.
    """
    from pipeline.store import feature_store  # the Feast adapter: only this path needs it

    store = params.feature_store
    assert store.service is not None  # the caller checked
    path = Path(store.entities)
    raw = feature_store.read_entities(path)
    repo = Path(store.repo)
    description = feature_store.describe(repo, store.service)
    target = params.data.target
    entities = entity_frame(raw, description.entity_field, target, str(path))
    frame = feature_store.historical(repo, store.service, entities)
    record = service_record(description, store)
    fingerprint = training_fingerprint(frame, [description.entity_field, *feature_names(description), target])
    data = feature_dataset(frame, description, params.data, fingerprint)
    return data, FeatureSource(description, entities_fingerprint(entities, description.entity_field, target), record)
