"""Safe loading, digests, signatures and redaction: the pure parts of the integrity promise."""

import pickle
import shutil

import pytest
import skops.io

from api.release import contract
from api.release.redact import redact
from api.release.safe_model import ALLOWED_TYPES, RefusedModel, artifact_digest, load_estimator, types_in
from api.release.verdicts import Verdict, load_verify_key, refusal, verifies
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams
from pipeline.core.data import prepare
from pipeline.core.release_keys import load_signing_key, new_key_pair, sign
from pipeline.core.train import train

from ..families import FAMILY_NAMES, TEAM_FEATURES, quick_params

MLMODEL = """flavors:
  python_function: {loader_module: mlflow.sklearn, model_path: %(file)s}
  sklearn: {code: %(code)s, pickled_model: %(file)s, serialization_format: %(fmt)s}
"""


@pytest.fixture(scope="module")
def models():
    data = prepare(generate_churn(500, 5).astype(str), DataParams())
    models = {kind: train(data, quick_params(kind), test_size=0.25, seed=5).model for kind in FAMILY_NAMES}
    for kind in FAMILY_NAMES:  # and each behind the team's feature code
        models[f"{kind}+features"] = train(data, quick_params(kind, features=TEAM_FEATURES), 0.25, 5).model
    return models


def model_dir(tmp_path, payload: bytes, fmt="skops", code="null", file="model.skops"):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "MLmodel").write_text(MLMODEL % {"fmt": fmt, "code": code, "file": file})
    (tmp_path / file).write_bytes(payload)
    return tmp_path


def test_the_allow_list_covers_every_model_params_can_build(models):
    for kind, model in models.items():
        assert types_in(skops.io.dumps(model)) <= ALLOWED_TYPES, kind


def test_every_buildable_model_loads_and_predicts_the_same(models, tmp_path):
    X = prepare(generate_churn(50, 9).astype(str), DataParams()).features
    for kind, model in models.items():
        directory = model_dir(tmp_path / kind, skops.io.dumps(model))
        assert (load_estimator(directory).predict_proba(X) == model.predict_proba(X)).all(), kind


@pytest.mark.parametrize(
    ("fmt", "code", "file", "message"),
    [
        ("pickle", "null", "model.pkl", "serialization format 'pickle' can run code"),
        ("cloudpickle", "null", "model.pkl", "serialization format 'cloudpickle'"),
        ("skops", "code", "model.skops", "ships a code path"),
        ("skops", "null", "../model.skops", "is not a file in the model directory"),
    ],
)
def test_unsafe_formats_are_refused_before_anything_loads(tmp_path, fmt, code, file, message):
    with pytest.raises(RefusedModel, match=message):
        load_estimator(model_dir(tmp_path / "m", pickle.dumps({"a": 1}), fmt, code, file))


def test_a_type_outside_the_allow_list_is_refused_and_named(tmp_path):
    from sklearn.svm import SVC  # harmless, but not something params.yaml builds

    directory = model_dir(tmp_path, skops.io.dumps(SVC()))
    with pytest.raises(RefusedModel, match=r"outside the allow-list: .*sklearn\.svm\._classes\.SVC"):
        load_estimator(directory)


def test_the_digest_changes_with_any_loaded_byte_and_ignores_registration_metadata(models, tmp_path):
    directory = model_dir(tmp_path / "m", skops.io.dumps(models["logistic_regression"]))
    schema = tmp_path / "feature_schema.json"
    schema.write_text('{"positive_label": "Yes"}')
    digest = artifact_digest(directory, schema)
    assert digest.startswith("sha256:") and len(digest) == 71
    (directory / "registered_model_meta").write_text("model_name: x")
    assert artifact_digest(directory, schema) == digest
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    assert artifact_digest(copy, schema) == digest
    schema.write_text('{"positive_label": "No"}')
    assert artifact_digest(directory, schema) != digest


def test_signatures_verify_only_the_exact_verdict():
    private, public = new_key_pair()
    key, verify_key = load_signing_key(private.decode()), load_verify_key(public.decode())
    verdict = Verdict("smoke", "churn", "3", "run", "sha256:aa", "passed", "abc")
    signature = sign(key, verdict)
    assert verifies(verify_key, verdict, signature)
    for changed in ({"version": "4"}, {"artifact_digest": "sha256:ab"}, {"verdict": "failed"}, {"kind": "gate"}):
        assert not verifies(verify_key, Verdict(**{**verdict.__dict__, **changed}), signature)
    other = load_verify_key(new_key_pair()[1].decode())
    assert not verifies(other, verdict, signature)
    assert not verifies(verify_key, verdict, "not base64!") and not verifies(verify_key, verdict, None)


def test_refusal_reasons():
    tags = {
        contract.GATE: "passed",
        contract.SMOKE: "passed",
        contract.ARTIFACT_DIGEST: "sha256:aa",
        contract.SMOKE_ARTIFACT_DIGEST: "sha256:aa",
    }
    ids = {"model": "m", "version": "1", "run_id": "r", "verify_key": None}
    assert refusal(tags, digest="sha256:aa", **ids) is None
    assert refusal(tags, digest="sha256:bb", **ids).startswith("artifact changed")
    assert refusal({**tags, contract.SMOKE: "failed"}, digest="sha256:aa", **ids) == "smoke failed"
    assert refusal({**tags, contract.SMOKE: "failed"}, digest="sha256:aa", require_smoke=False, **ids) is None
    assert refusal({**tags, contract.GATE: "failed"}, digest="sha256:aa", **ids) == "gate failed"
    assert "smoke tested" in refusal({**tags, contract.SMOKE_ARTIFACT_DIGEST: ""}, digest="sha256:aa", **ids)
    _, public = new_key_pair()
    signed = {**ids, "verify_key": load_verify_key(public.decode())}
    assert refusal(tags, digest="sha256:aa", **signed) == "gate verdict is not signed by the release key"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://alice:s3cret@host:5000/x", "http://***@host:5000/x"),
        (
            "error at https://tok@host and postgresql+psycopg2://u:p@db/mlflow",
            "error at https://***@host and postgresql+psycopg2://***@db/mlflow",
        ),
        ("http://host:5000/x?a=b@c", "http://host:5000/x?a=b@c"),
        ("no uri here", "no uri here"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_a_version_naming_feature_code_this_serving_code_lacks_is_refused_with_the_class_named(models, tmp_path):
    # given: a pipeline with the team's features, whose file names a class features/ does not have (another commit's)
    data = skops.io.dumps(models["logistic_regression+features"])
    renamed = rewrite_schema(data, "TenureBucket", "TenureBand")
    # then: refused before anything is imported or built, the class named
    with pytest.raises(RefusedModel, match=r"project's own code that this serving code does not have: "
                       r"features\.churn\.TenureBand"):  # fmt: skip
        load_estimator(model_dir(tmp_path, renamed))
    # and a module outside the project named as if it were feature code is refused the same way
    outside = rewrite_schema(data, "features.churn", "os", "TenureBucket", "system")
    with pytest.raises(RefusedModel, match=r"types outside the allow-list: os\.ChargesPerTenureMonth, os\.system$"):
        load_estimator(model_dir(tmp_path / "os", outside))


def rewrite_schema(data: bytes, *replacements: str) -> bytes:
    """The skops file with schema.json's text edited (pairs of old, new)."""
    import io
    import zipfile

    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            content = source.read(name)
            if name == "schema.json":
                text = content.decode()
                for old, new in zip(replacements[::2], replacements[1::2], strict=True):
                    text = text.replace(old, new)
                content = text.encode()
            target.writestr(name, content)
    return out.getvalue()
