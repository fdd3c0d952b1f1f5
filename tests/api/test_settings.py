"""The API's settings: read once from the documented variables, spelled exactly; a bad value named, never guessed."""

import os

import pytest

from api.settings import Settings, SettingsError, current, share_metrics_through


def test_only_the_documented_variables_spelled_exactly_are_read(monkeypatch):
    # a field's own name, or a documented name in another case, is not a setting
    monkeypatch.setenv("VERIFY_KEY_PEM", "not a key")
    monkeypatch.setenv("verify_key_pem", "not a key")
    monkeypatch.setenv("port", "9999")
    monkeypatch.setenv("Max_Batch_Size", "3")
    monkeypatch.setenv("MULTIPROC_DIR", "/nowhere")
    for name in ("RELEASE_VERIFY_KEY", "PORT", "MAX_BATCH_SIZE", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert (settings.verify_key_pem, settings.port, settings.max_batch_size, settings.multiproc_dir) == (
        None,
        8000,
        10000,
        None,
    )
    # the documented names are
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("MAX_BATCH_SIZE", "3")
    assert (Settings.from_env().port, Settings.from_env().max_batch_size) == (9999, 3)


def test_a_bad_value_or_a_placeholder_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MAX_BATCH_SIZE", "many")
    with pytest.raises(SettingsError, match=r"^MAX_BATCH_SIZE='many' is not a valid int$"):
        Settings.from_env()
    monkeypatch.delenv("MAX_BATCH_SIZE")
    monkeypatch.setenv("MODEL_INFO_TOKEN", "change-me-token")
    with pytest.raises(SettingsError, match="MODEL_INFO_TOKEN") as refused:
        Settings.from_env()
    assert "change-me-token" not in str(refused.value)


def test_a_plain_constructor_never_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MAX_BATCH_SIZE", "3")
    assert Settings(model_name="m").max_batch_size == 10000


def test_a_single_worker_reads_its_settings_again_once_the_metrics_directory_is_named(monkeypatch, tmp_path):
    # python -m api names the shared metrics directory after reading its settings; one worker runs in that process
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    current.cache_clear()
    try:
        assert current().multiproc_dir is None and current() is current()  # read once, then shared
        share_metrics_through(str(tmp_path))
        assert current().multiproc_dir == str(tmp_path) and current().shared_metrics
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        current.cache_clear()
