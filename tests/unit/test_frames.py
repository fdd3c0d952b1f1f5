"""The one cast to the pipeline's frame: its quick path for plain columns gives exactly the general path's frame."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.release.frames import Column, typed_frame

FEATURES = [Column("n", True), Column("t", False)]
numbers = st.none() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True, allow_infinity=True)
texts = st.none() | st.text(max_size=5) | st.just(float("nan"))


def general(columns: dict) -> pd.DataFrame:
    """The general path: the same values through a frame (typed_frame then casts column by column)."""
    frame = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    return typed_frame(frame, FEATURES).reset_index(drop=True)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(st.lists(numbers, min_size=n, max_size=n),
                                                     st.lists(texts, min_size=n, max_size=n))))  # fmt: skip
def test_plain_columns_give_the_general_paths_frame(pair):
    columns = {"n": pair[0], "t": pair[1]}
    pd.testing.assert_frame_equal(typed_frame(columns, FEATURES), general(columns))


def test_a_float_array_column_is_taken_as_it_is_and_anything_else_numeric_goes_the_general_way():
    quick = typed_frame({"n": np.array([1.5, np.nan]), "t": ["a", None]}, FEATURES)
    assert quick["n"].dtype == np.float64 and np.isnan(quick["n"][1]) and quick["t"].tolist()[0] == "a"
    assert np.isnan(quick["t"][1])
    # text and booleans in a numeric column are to_numeric's to decide
    mixed = typed_frame({"n": ["2", True, "x"], "t": ["a", "b", "c"]}, FEATURES)
    assert mixed["n"].tolist()[:2] == [2.0, 1.0] and np.isnan(mixed["n"][2])


@pytest.mark.parametrize("values", [[None], [float("nan")], [3], [2.5]])
def test_missing_and_plain_numbers(values):
    pd.testing.assert_frame_equal(typed_frame({"n": values, "t": ["x"]}, FEATURES), general({"n": values, "t": ["x"]}))
