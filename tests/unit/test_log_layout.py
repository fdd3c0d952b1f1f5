"""The prediction log's segment paths: every model and replica name is one path component inside the root."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.log_layout import prediction_segment

AT = datetime(2026, 2, 1, 12, 30, 5, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("model", "folder"), [(".", "_"), ("..", "__"), ("../x", ".._x"), ("a/b", "a_b"), ("", "_"), ("churn", "churn")]
)
def test_a_model_name_is_one_folder_never_a_step_out_of_the_root(model, folder):
    # when: a segment's path is made for the model name
    path = prediction_segment("/root", model, AT, "host-1", 7)
    # then: the model is one folder under predictions/, never . or ..
    assert path == f"/root/predictions/{folder}/2026-02-01/123005.123456-host-1-000007.parquet"
    assert all(part not in (".", "..") for part in path.split("/"))
