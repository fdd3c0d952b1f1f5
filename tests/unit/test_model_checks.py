"""A crafted model never reaches a serving process: structure checks, and a first load in a child process."""

import json
import subprocess
import sys
from dataclasses import asdict

import mlflow
import pytest
import skops.io

from api.release import load_probe
from api.release.load_probe import ProbeLimits, probe
from api.release.model_checks import check_structure
from api.release.safe_model import RefusedModel, load_estimator
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams, ModelParams
from pipeline.core.data import prepare
from pipeline.core.train import train
from pipeline.store.tracking import smoke_examples

from ..conftest import ROOT
from ..crafted import BOOSTING_ATTACKS, FOREST_ATTACKS, child_out_of_range, cycle

SMALL = {
    "logistic_regression": ModelParams(),
    "random_forest": ModelParams(type="random_forest", random_forest={"n_estimators": 8, "max_depth": 6}),
    "hist_gradient_boosting": ModelParams(type="hist_gradient_boosting", hist_gradient_boosting={"max_iter": 5}),
}


@pytest.fixture(scope="module")
def data():
    return prepare(generate_churn(500, 11).astype(str), DataParams())


def fitted(data, kind: str):
    return train(data, SMALL[kind], test_size=0.25, seed=11)


def saved(tmp_path, data, result, attack=None) -> tuple:
    """A model directory as MLflow logs it, its feature schema and its stored examples (made before `attack`)."""
    examples = smoke_examples(result, data, 10)
    if attack is not None:
        attack(result.model)
    model_dir = tmp_path / "model"
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(result.model))
    mlflow.sklearn.save_model(result.model, str(model_dir), serialization_format="skops", skops_trusted_types=untrusted)
    schema = tmp_path / "feature_schema.json"
    schema.write_text(json.dumps({"features": [asdict(f) for f in data.schema], "positive_label": "Yes"}))
    return model_dir, schema, examples


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_every_model_this_project_builds_passes_the_checks_and_the_probe(tmp_path, data, kind):
    result = fitted(data, kind)
    check_structure(result.model)
    model_dir, schema, examples = saved(tmp_path, data, result)
    assert probe(model_dir, schema, examples, ProbeLimits()).startswith("sha256:")


@pytest.mark.parametrize("attack", FOREST_ATTACKS, ids=lambda a: a.__name__)
def test_a_crafted_forest_is_refused_naming_the_tree_and_node(data, attack):
    result = fitted(data, "random_forest")
    attack(result.model)
    reloaded = skops.io.loads(
        skops.io.dumps(result.model), trusted=skops.io.get_untrusted_types(data=skops.io.dumps(result.model))
    )  # it survives a round trip through skops
    with pytest.raises(RefusedModel, match=r"classifier\.estimators_\[\d+\]: node \d+"):
        check_structure(reloaded)


@pytest.mark.parametrize("attack", BOOSTING_ATTACKS, ids=lambda a: a.__name__)
def test_a_crafted_boosting_model_is_refused(data, attack):
    result = fitted(data, "hist_gradient_boosting")
    attack(result.model)
    with pytest.raises(RefusedModel, match=r"_predictors\[\d+\]\[0\]: node \d+"):
        check_structure(result.model)


def test_the_attack_is_real_an_unchecked_predict_dies_and_the_probe_refuses_instead(tmp_path, data):
    # given: a forest whose tree points outside its nodes, saved as a version would be
    model_dir, schema, examples = saved(tmp_path, data, fitted(data, "random_forest"), attack=child_out_of_range)
    # then: loaded and used without the checks, it kills the process that predicts
    unchecked = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); from api.release.safe_model import load_estimator; "
        "from api.release.frames import Column, typed_frame; from pathlib import Path; "
        "m = load_estimator(Path(sys.argv[2])); "
        "s = json.load(open(sys.argv[3])); e = json.load(open(sys.argv[4])); "
        "f = [Column(c['name'], c['kind'] == 'numeric') for c in s['features']]; "
        "m.predict(typed_frame({c.name: [r.get(c.name) for r in e['records']] for c in f}, f))"
    )
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    died = subprocess.run(
        [sys.executable, "-c", unchecked, str(ROOT), str(model_dir), str(schema), str(tmp_path / "examples.json")],
        capture_output=True,
        timeout=120,
    )
    assert died.returncode < 0, died.stderr[-500:]
    # and the probe says why, from a child, while this process lives on
    with pytest.raises(RefusedModel, match="outside the tree"):
        probe(model_dir, schema, examples, ProbeLimits())


def test_a_probe_child_that_crashes_hangs_or_blows_its_memory_is_a_refusal(tmp_path, data, monkeypatch):
    result = fitted(data, "logistic_regression")
    model_dir, schema, examples = saved(tmp_path, data, result)
    with pytest.raises(RefusedModel, match=r"ran out of memory \(limit 300 MB\)|failed"):
        probe(model_dir, schema, examples, ProbeLimits(memory_mb=300))
    with pytest.raises(RefusedModel, match=r"took longer than 0\.2 s"):
        probe(model_dir, schema, examples, ProbeLimits(timeout_s=0.2))
    monkeypatch.setattr(load_probe, "CHILD", ("-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"))
    with pytest.raises(RefusedModel, match=r"crashed the probe process \(SIGSEGV\)"):
        probe(model_dir, schema, examples, ProbeLimits())


def test_a_model_that_answers_its_stored_examples_differently_is_refused(tmp_path, data):
    result = fitted(data, "logistic_regression")
    model_dir, schema, examples = saved(tmp_path, data, result)
    flipped = {**examples, "predictions": ["No" if p == "Yes" else "Yes" for p in examples["predictions"]]}
    with pytest.raises(RefusedModel, match="stored example 0 is answered"):
        probe(model_dir, schema, flipped, ProbeLimits())
    shifted = {**examples, "probabilities": [p + 0.01 for p in examples["probabilities"]]}
    with pytest.raises(RefusedModel, match="probabilities on the stored examples differ"):
        probe(model_dir, schema, shifted, ProbeLimits())
    assert load_estimator(model_dir) is not None  # the files themselves are fine: only the answers were wrong


def test_a_tree_that_loops_is_refused_before_any_walk(data):
    result = fitted(data, "random_forest")
    cycle(result.model)
    with pytest.raises(RefusedModel, match="outside the tree"):
        check_structure(result.model)


def test_bytes_a_child_accepted_with_the_same_examples_and_limits_are_not_probed_again(tmp_path, data, monkeypatch):
    from api.release.check import ModelFiles, probed
    from api.release.safe_model import read_artifact

    model_dir, schema, examples = saved(tmp_path, data, fitted(data, "logistic_regression"))
    files = ModelFiles(model_dir, schema, read_artifact(model_dir, schema))
    monkeypatch.setenv("PROBE_CACHE_DIR", str(tmp_path / "cache"))
    probed(files, examples)  # a real child accepts them
    # when: the child would now crash, the same bytes with the same examples need no child
    monkeypatch.setattr(load_probe, "CHILD", ("-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"))
    probed(files, examples)
    # but other examples, or other limits, or no cache at all, ask a child again
    other = {**examples, "records": examples["records"][:3]}
    for kwargs in ({"examples": other}, {"examples": examples, "limits": ProbeLimits(timeout_s=30)}):
        with pytest.raises(RefusedModel, match="SIGSEGV"):
            probed(files, **kwargs)
    monkeypatch.setenv("PROBE_CACHE_DIR", "")
    with pytest.raises(RefusedModel, match="SIGSEGV"):
        probed(files, examples)
