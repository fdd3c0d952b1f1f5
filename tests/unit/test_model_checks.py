"""A crafted model never reaches a serving process: structure checks, and a first load in a child process."""

import json
import multiprocessing
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

import mlflow
import pytest
import skops.io

from api.release import load_probe
from api.release.load_probe import ProbeLimits, probe
from api.release.model_checks import check_structure
from api.release.safe_model import ALLOWED_TYPES, RefusedModel, check_stored, load_estimator, load_estimator_bytes
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams
from pipeline.core.data import prepare
from pipeline.core.train import train
from pipeline.store.training_runs import smoke_examples

from ..conftest import ROOT
from ..crafted import (
    BOOSTER_ATTACKS,
    BOOSTING_ATTACKS,
    FOREST_ATTACKS,
    checked_after_load,
    child_out_of_range,
    cycle,
)
from ..families import FAMILY_NAMES, quick_params

SMALL = {kind: quick_params(kind) for kind in FAMILY_NAMES}


@pytest.fixture(scope="module")
def data():
    return prepare(generate_churn(500, 11).astype(str), DataParams())


def fitted(data, kind: str):
    return train(data, SMALL[kind], test_size=0.25, seed=11)


def saved(tmp_path, data, result, attack=None, examples: int = 10) -> tuple:
    """A model directory as MLflow logs it, its feature schema and its stored examples (made before `attack`).

    A file attack (a booster's stored model, tests/crafted.py) rewrites the saved skops file; any other changes
    the pipeline before it is saved.
    """
    examples = smoke_examples(result, data, examples)
    on_file = getattr(attack, "on_file", False)
    if attack is not None and not on_file:
        attack(result.model)
    model_dir = tmp_path / "model"
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(result.model))
    mlflow.sklearn.save_model(
        result.model,
        str(model_dir),
        serialization_format="skops",
        skops_trusted_types=untrusted,
        # as training logs it: inferring requirements would start a subprocess that reloads the model
        pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
    )
    if on_file:
        stored = model_dir / "model.skops"
        stored.write_bytes(attack(stored.read_bytes()))
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


# XGBoost's and LightGBM's boosters: their own bytes inside the skops file, parsed by their own C++.
CRAFTED = [(family, attack) for family, attacks in sorted(BOOSTER_ATTACKS.items()) for attack in attacks]


def _ids(case) -> str:
    return case[1].__name__


@pytest.fixture(scope="module")
def booster_files(data) -> dict:
    """Each booster family's fitted pipeline and its skops bytes, fitted once for the module."""
    files = {}
    for family in BOOSTER_ATTACKS:
        result = fitted(data, family)
        files[family] = (result, skops.io.dumps(result.model))
    return files


CHECK_CASES = [c for c in CRAFTED if c[1].expect == "check"]


@pytest.fixture(scope="module")
def check_refusals(booster_files) -> dict[str, str | None]:
    """What the structure check says of each file the library loads, loaded in one fresh child process.

    These files pass the library's parser, but what the parser does with a crafted layout is outside what a test
    can see (one is a read past an array): a child keeps this worker's heap clean for the tests after it.
    """
    crafted = [attack(booster_files[family][1]) for family, attack in CHECK_CASES]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        answers = child.submit(checked_after_load, crafted).result(timeout=300)
    return {_ids(case): answer for case, answer in zip(CHECK_CASES, answers, strict=True)}


@pytest.mark.parametrize("case", CHECK_CASES, ids=_ids)
def test_a_crafted_booster_the_library_loads_is_refused_by_the_checks_naming_where(check_refusals, case):
    # given: the skops file a served version would hold, its booster's model rewritten, loaded by the library
    # (the ones it cannot load are the probe's, below)
    # then: the checks refuse it before anything predicts, naming the tree (and the node)
    refusal = check_refusals[_ids(case)]
    assert refusal is not None and re.search(case[1].refusal, refusal), refusal


@pytest.mark.parametrize("family", sorted(BOOSTER_ATTACKS))
def test_the_booster_crafting_changes_only_what_it_says(booster_files, family):
    # an attack that rewrote nothing would make every test above pass for nothing
    _, honest = booster_files[family]
    for attack in BOOSTER_ATTACKS[family]:
        assert attack(honest) != honest, attack.__name__
    check_structure(skops.io.loads(honest, trusted=sorted(ALLOWED_TYPES)))


@pytest.mark.parametrize("case", CRAFTED, ids=_ids)
def test_every_crafted_booster_is_refused_before_its_library_parses_it(booster_files, case, monkeypatch):
    # given: the skops file a served version would hold, its booster's stored model rewritten
    family, attack = case
    crafted = attack(booster_files[family][1])
    # when: it is loaded as every process loads a version (probe child, API, score, promote), with the libraries'
    # parsers replaced by a failure: reaching one would mean the stored bytes went unchecked
    import lightgbm
    import xgboost

    def parsed(self, state):
        raise AssertionError(f"{type(self).__module__} parsed a crafted booster")

    monkeypatch.setattr(xgboost.core.Booster, "__setstate__", parsed)
    monkeypatch.setattr(lightgbm.basic.Booster, "__setstate__", parsed)
    # then: the stored check refuses it, naming the field and the tree (or what of the bytes it cannot read)
    with pytest.raises(RefusedModel, match=attack.stored):
        load_estimator_bytes(crafted)


@pytest.mark.parametrize("family", sorted(BOOSTER_ATTACKS))
def test_an_honest_booster_passes_the_stored_check_and_loads(booster_files, family):
    result, honest = booster_files[family]
    check_stored(honest)
    loaded = load_estimator_bytes(honest)
    check_structure(loaded)
    X = result.split.X_test
    assert (loaded.predict_proba(X) == result.model.predict_proba(X)).all()


CHECKED = [c for c in CRAFTED if c[1].expect == "check"]
STORED_ONLY = [c for c in CRAFTED if c[1].expect == "stored"]


@pytest.mark.parametrize(
    "case",
    [c for c in CRAFTED if c[1].expect not in ("check", "stored")] + CHECKED[::6] + STORED_ONLY[::4],
    ids=_ids,
)
def test_the_probe_refuses_every_crafted_booster_from_a_child_and_this_process_lives_on(
    tmp_path, data, booster_files, case
):
    # given: a crafted version saved as training logs one, with the test set as its stored examples
    family, attack = case
    result = booster_files[family][0]
    model_dir, schema, examples = saved(tmp_path, data, result, attack=attack, examples=len(result.split.X_test))
    # then: the first load is a child's, and the child refuses the stored bytes before the library parses them:
    # whatever the library would have done with them (refuse, crash, read outside its arrays), this process gets a
    # refusal that names the field and the tree, every time
    with pytest.raises(RefusedModel, match=attack.stored):
        probe(model_dir, schema, examples, ProbeLimits())


# Boosters whose every tree is one leaf: the smallest layout each library writes (LightGBM leaves a one-leaf tree's
# leaf_weight empty), which the stored checks must take as it is.
ONE_LEAF = {
    "xgboost": {"n_estimators": 3, "min_child_weight": 1e9},
    "lightgbm": {"n_estimators": 3, "min_child_samples": 10**6},
}


@pytest.mark.parametrize("family", sorted(BOOSTER_ATTACKS))
def test_a_booster_of_one_leaf_trees_passes_the_stored_check(data, family):
    from pipeline.core.config import ModelParams

    model = train(data, ModelParams(type=family, **{family: ONE_LEAF[family]}), test_size=0.25, seed=11).model
    stored = skops.io.dumps(model)
    check_stored(stored)
    X = data.features.head(20)
    assert (load_estimator_bytes(stored).predict_proba(X) == model.predict_proba(X)).all()
