"""Which online store an API serving a feature-store version reads, from FEATURE_STORE_URL or the repo's own file."""

from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.store.feature_store import online_url

from ..conftest import ROOT


def test_the_embedded_repo_names_its_sqlite_file_absolutely():
    repo = ROOT / "featurestore" / "repo"
    assert online_url(repo) == "sqlite://" + str((ROOT / "data" / "features" / "online.db").resolve())


def test_a_given_url_wins():
    assert online_url(ROOT / "featurestore" / "team", "redis://cache:6379/0") == "redis://cache:6379/0"


def test_a_redis_repo_without_a_url_is_a_config_error_naming_the_setting():
    with pytest.raises(ConfigError, match="online store is 'redis'; set FEATURE_STORE_URL"):
        online_url(ROOT / "featurestore" / "team")


def test_an_unreadable_config_names_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"feature_store\.yaml"):
        online_url(tmp_path)
