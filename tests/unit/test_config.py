import pytest

from pipeline.core.config import Params
from pipeline.core.errors import ConfigError
from pipeline.core.params_file import apply_overrides, build_params, load_params

from ..conftest import ROOT


def test_repository_params_file_loads_into_frozen_objects():
    params = load_params(ROOT / "params.yaml")
    assert params.registry.model_name == "churn-classifier"
    with pytest.raises(Exception, match="frozen"):
        params.gates.confidence = 0.5


def test_set_overrides_a_nested_key_with_a_yaml_typed_value():
    params = load_params(ROOT / "params.yaml", ["gates.metrics.f1.min=0.9", "model.random_forest.max_depth=null"])
    assert params.gates.metrics["f1"].min == 0.9
    assert params.model.random_forest.max_depth is None


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key gates\.f1_minimum"):
        build_params({"gates": {"f1_minimum": 0.5}})


def test_unknown_key_from_set_is_named():
    with pytest.raises(ConfigError, match=r"unknown key data\.pth"):
        load_params(ROOT / "params.yaml", ["data.pth=x.csv"])


def test_wrong_type_is_named_with_the_value():
    with pytest.raises(ConfigError, match=r"gates\.metrics\.f1\.min: .*'high'"):
        load_params(ROOT / "params.yaml", ["gates.metrics.f1.min=high"])
    with pytest.raises(ConfigError, match=r"gates\.f1_min: must be a number \(got 'high'\)"):
        load_params(ROOT / "params.yaml", ["gates.f1_min=high"])


def test_gates_a_teammate_gets_wrong_are_named():
    with pytest.raises(ConfigError, match=r"metric 'f1' has neither min nor max_drop"):
        build_params({"gates": {"metrics": {"f1": {}}}})
    with pytest.raises(ConfigError, match=r"gates\.confidence"):
        build_params({"gates": {"confidence": 1.5}})
    with pytest.raises(ConfigError, match=r"gates\.bootstrap_samples"):
        build_params({"gates": {"bootstrap_samples": 10}})
    with pytest.raises(ConfigError, match=r"unknown key gates\.metrics\.f1\.floor"):
        build_params({"gates": {"metrics": {"f1": {"floor": 0.5}}}})


def test_out_of_range_value_is_refused():
    with pytest.raises(ConfigError, match=r"data\.test_size"):
        build_params({"data": {"test_size": 1.5}})


def test_unknown_model_type_is_refused():
    with pytest.raises(ConfigError, match=r"model\.type"):
        build_params({"model": {"type": "svm"}})


def test_set_without_equals_is_a_usage_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["gates.f1_min"])


def test_set_through_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"gates": {"f1_min": 0.5}}, ["gates.f1_min.x=1"])


def test_numeric_positive_label_is_compared_as_text():
    assert build_params({"data": {"positive_label": 1}}).data.positive_label == "1"


def test_missing_and_malformed_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(listy)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (["nosuch.Thing"], r"model\.features\.0\.transformer: .*no module 'nosuch' in features/"),
        (["churn.Nothing"], r"model\.features\.0\.transformer: .*features/churn\.py defines no class 'Nothing'"),
        (["churn.np"], r"defines no class 'np'"),  # a name the module imports is not its class
        ([{"transformer": "churn.TenureBucket", "extra": 1}], r"model\.features\.0\.extra"),
    ],
)
def test_feature_steps_name_only_classes_of_features(features, message):
    with pytest.raises(ConfigError, match=message):
        build_params({"model": {"features": features}})


def test_every_declared_family_is_a_model_type_with_its_own_section():
    from families import FAMILIES

    for name, family in FAMILIES.items():
        params = build_params({"model": {"type": name}})
        assert params.model.family is family
        assert params.model.hyperparameters() == family.params().model_dump()
    with pytest.raises(ConfigError, match=r"model\.xgboost\.max_depth"):
        build_params({"model": {"xgboost": {"max_depth": 0}}})


def test_hyperparameters_follow_the_selected_type():
    params = Params().model_copy(update={"model": Params().model.model_copy(update={"type": "random_forest"})})
    assert "n_estimators" in params.model.hyperparameters()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["registry.candidate_alias=production"], r"registry: candidate_alias and production_alias are both"),
        (["registry.production_alias=prod uction"], r"registry\.production_alias: not a valid alias name"),
        (["registry.candidate_alias=latest"], r"registry\.candidate_alias: not a valid alias name"),
        (["registry.candidate_alias=v3"], r"registry\.candidate_alias: not a valid alias name"),
        (["gates.metrics.f1.min=true"], r"gates\.metrics\.f1\.min: Input should be a valid number \(got True\)"),
        (["gates.f1_min=true"], r"gates\.f1_min: must be a number \(got True\)"),
        (["data.seed=true"], r"data\.seed: Input should be a valid integer"),
    ],
)
def test_config_a_teammate_gets_wrong_is_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_params(ROOT / "params.yaml", overrides)


def test_set_keeps_the_text_of_text_fields():
    params = load_params(ROOT / "params.yaml", ["data.positive_label=Yes", "registry.model_name=0123"])
    assert params.data.positive_label == "Yes" and params.registry.model_name == "0123"
    assert load_params(ROOT / "params.yaml", ["data.id_column=null"]).data.id_column is None


def test_yes_in_a_params_file_is_text_not_a_boolean(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  positive_label: Yes\n")
    assert load_params(path).data.positive_label == "Yes"


def test_a_duplicate_key_anywhere_is_refused_with_its_name_and_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("gates:\n  f1_min: 0.55\n  f1_min: 0.30\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'f1_min' \(first on line 2\)"):
        load_params(path)
    path.write_text("data:\n  seed: 1\ngates: {}\ndata:\n  seed: 2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'data'"):
        load_params(path)


def test_feature_store_is_off_by_default_and_named_when_wrong():
    params = load_params(ROOT / "params.yaml")
    assert params.feature_store.service is None  # the CSV at data.path unless a service is named
    on = load_params(ROOT / "params.yaml", ["feature_store.service=churn_model", "feature_store.stale=warn"])
    assert (on.feature_store.service, on.feature_store.stale) == ("churn_model", "warn")
    for overrides, message in [
        (["feature_store.stale=ignore"], r"feature_store\.stale"),
        (["feature_store.service=churn model"], r"feature_store\.service: .*not a feature service name"),
        (["feature_store.max_age_s.customer_profile=0"], r"feature_store\.max_age_s\.customer_profile"),
        (["feature_store.skew.sample=0"], r"feature_store\.skew\.sample"),
        (["feature_store.skew.tolerance=-1"], r"feature_store\.skew\.tolerance"),
        (["feature_store.skew.tol=1"], r"unknown key feature_store\.skew\.tol"),
        (["feature_store.lookup_timeout_ms=true"], r"feature_store\.lookup_timeout_ms"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_params(ROOT / "params.yaml", overrides)
