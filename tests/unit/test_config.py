import pytest

from pipeline.config import Params, apply_overrides, build_params, load_params
from pipeline.errors import ConfigError

from ..conftest import ROOT


def test_repository_params_file_loads_into_frozen_objects():
    params = load_params(ROOT / "params.yaml")
    assert params.registry.model_name == "churn-classifier"
    with pytest.raises(Exception, match="frozen"):
        params.gates.f1_min = 0.1


def test_set_overrides_a_nested_key_with_a_yaml_typed_value():
    params = load_params(ROOT / "params.yaml", ["gates.f1_min=0.9", "model.random_forest.max_depth=null"])
    assert params.gates.f1_min == 0.9
    assert params.model.random_forest.max_depth is None


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key gates\.f1_minimum"):
        build_params({"gates": {"f1_minimum": 0.5}})


def test_unknown_key_from_set_is_named():
    with pytest.raises(ConfigError, match=r"unknown key data\.pth"):
        load_params(ROOT / "params.yaml", ["data.pth=x.csv"])


def test_wrong_type_is_named_with_the_value():
    with pytest.raises(ConfigError, match=r"gates\.f1_min: .*'high'"):
        load_params(ROOT / "params.yaml", ["gates.f1_min=high"])


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


def test_hyperparameters_follow_the_selected_type():
    params = Params().model_copy(update={"model": Params().model.model_copy(update={"type": "random_forest"})})
    assert "n_estimators" in params.model.hyperparameters()
