"""make-data and train: the data set, and a fitted model logged as a run."""

from __future__ import annotations

from pathlib import Path

from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import Params
from pipeline.core.data import load_dataset
from pipeline.core.train import train
from pipeline.stages.context import Context
from pipeline.store import tracking


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
    """Fit, score and log a run; returns the run id."""
    ctx = Context.open(params)  # fail fast, before any work, if the tracking server is down
    with stage("train", f"{params.model.type} on {params.data.path}"):
        data = load_dataset(params.data)
        for note in data.notes:
            say(f"  note: {note}")
        result = train(data, params.model, params.data.test_size, params.data.seed)
        say(
            f"  {data.rows} rows, {len(data.schema)} features; "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        )
        run_id = tracking.log_training_run(ctx.tracking, params, data, result)
        say(f"  logged run {run_id}")
    github.write_outputs(run_id=run_id)
    return run_id
