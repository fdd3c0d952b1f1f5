"""`pipeline score` start-up: the input is read before MLflow and skops load; scoring itself imports no MLflow.

Each case runs in a fresh interpreter (what is imported depends on what a process imported before) and reports
sys.modules at the moments that matter.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.core.churn_data import generate_churn

from ..conftest import ROOT

# What loads the version (the registry's client, its sqlite store, the skops loader, the model's libraries): imported
# only once the input is being read, so the reading thread parses while they load.
VERSION_LIBRARIES = ("mlflow", "skops", "sqlalchemy", "alembic", "sklearn", "scipy", "pandas")

OBSERVE_READING = """
import json, sys
from pipeline.scoring import local_engine

libraries, seen = sys.argv[1].split(","), {}
start_reading = local_engine.start_reading


def observed(*args, **kwargs):
    seen["when reading starts"] = sorted(m for m in sys.modules if m.split(".")[0] in libraries)
    return start_reading(*args, **kwargs)


local_engine.start_reading = observed  # observed, not replaced: the stage reads as it always does
from pipeline.cli import main

code = main(["score", "--input", sys.argv[2], "--output", sys.argv[3]])
print(json.dumps({"code": code, **seen}))
"""

SCORE_A_VERIFIED_VERSION = """
import json, sys
from pathlib import Path
from api.model.loaded_model import LoadedModel
from api.model.schema import FeatureSpec
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams, ModelParams
from pipeline.core.data import prepare
from pipeline.core.train import train
from pipeline.scoring.local_engine import score_file

def mlflow_modules():
    return sorted(m for m in sys.modules if m.split(".")[0] == "mlflow")

data = prepare(generate_churn(600, 11).astype(str), DataParams())
result = train(data, ModelParams(type="logistic_regression"), test_size=0.25, seed=11)
model = LoadedModel(
    pipeline=result.model,
    features=[FeatureSpec(f.name, "double" if f.numeric else "string") for f in data.schema],
    positive_label=data.positive_label,
    max_batch_size=65_536,
    info={"version": "1"},
    parity_frames=[result.split.X_test.head(50)],
)
before = mlflow_modules()
summary = score_file(model, Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps({"before": before, "after": mlflow_modules(), "rows": summary.rows, "note": summary.note}))
"""


def _run(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _customers(path: Path, rows: int) -> Path:
    generate_churn(rows, 5).drop(columns=["Churn"]).to_csv(path, index=False)
    return path


def test_score_starts_reading_its_input_before_mlflow_and_skops_are_imported(tmp_path, empty_mlflow_db):
    # given: a tracking store without the model, and an input file
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    source = _customers(tmp_path / "in.csv", 200)

    # when: `score` runs in a fresh interpreter
    seen = _run(
        OBSERVE_READING, ",".join(VERSION_LIBRARIES), str(source), str(tmp_path / "out.csv"), cwd=tmp_path, env=env
    )

    # then: reading had started before any of them was imported; the store, imported later, names what is missing
    assert seen["when reading starts"] == []
    assert seen["code"] == 2
    assert not (tmp_path / "out.csv").exists()


def test_scoring_a_verified_version_imports_no_mlflow(tmp_path):
    # given: a version loaded without MLflow (as the registry source hands it over) and an input file
    source = _customers(tmp_path / "in.csv", 300)

    # when: the local engine scores the file in a fresh interpreter
    seen = _run(SCORE_A_VERIFIED_VERSION, str(source), str(tmp_path / "out.csv"), cwd=ROOT)

    # then: every row went through the columnar path and no MLflow module (pyfunc or any other) was imported
    assert seen["before"] == [] and seen["after"] == []
    assert seen["rows"] == 300
    assert seen["note"].startswith("compiled path on columns")
    assert (tmp_path / "out.csv").exists()
